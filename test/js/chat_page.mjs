// Opens LlamaCppEx.HTTP's chat page in headless Chromium (Debian's, through
// playwright-core), types a message, waits for the streamed reply and
// writes a screenshot. Run by test/http_page_test.exs.
//   LCX_BASE_URL    http://127.0.0.1:PORT
//   LCX_SCREENSHOT  where to write the PNG
//   LCX_CHROMIUM    the browser (default /usr/bin/chromium)
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");

const browser = await chromium.launch({
  executablePath: process.env.LCX_CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
});
try {
  const page = await browser.newPage({ viewport: { width: 900, height: 600 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(process.env.LCX_BASE_URL + "/");
  await page.fill("#input", "Tell me a story about a dog.");
  // count the reply's updates while it streams in
  await page.evaluate(() => {
    window.__updates = 0;
    new MutationObserver(() => window.__updates++).observe(document.getElementById("messages"), {
      subtree: true, characterData: true, childList: true
    });
  });
  await page.click("#send");
  await page.waitForSelector(".msg.assistant[data-state=done], .msg.error[data-state=done]", { timeout: 30000 });
  const reply = await page.textContent(".msg[data-state=done]");
  const cls = await page.getAttribute(".msg[data-state=done]", "class");
  const updates = await page.evaluate(() => window.__updates);
  await page.screenshot({ path: process.env.LCX_SCREENSHOT });
  console.log(JSON.stringify({ reply, class: cls, updates, errors }));
} finally {
  await browser.close();
}
