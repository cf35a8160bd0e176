// Load generator for OpenAI-compatible servers (LlamaCppEx.HTTP, llama-server):
// N concurrent clients, each sending R streaming chat requests one after the
// other, fixed prompts, fixed max_tokens, greedy, end-of-generation banned so
// every request generates exactly max_tokens. Prints one JSON line:
// aggregate generated tokens/s, p50/p99 time to first token and between
// streamed chunks (ms). No npm packages: Node's fetch.
//   node bench/http_load.mjs URL CLIENTS REQUESTS MAX_TOKENS [EOS_ID]
const [url, clients = "1", requests = "4", maxTokens = "64", eos = "2"] = process.argv.slice(2);
const N = +clients, R = +requests, M = +maxTokens;
const prompts = [
  "Tell me a story about a cat.",
  "Once upon a time there was a dog.",
  "Write about a sunny day in the park.",
  "What did the little girl find?"
];

function pct(xs, p) {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

async function one(i, stats) {
  const body = {
    messages: [{ role: "user", content: prompts[i % prompts.length] }],
    max_tokens: M, temperature: 0, stream: true, stream_options: { include_usage: true },
    logit_bias: { [eos]: false }
  };
  const t0 = performance.now();
  const res = await fetch(url + "/v1/chat/completions", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body)
  });
  if (!res.ok) throw new Error(`HTTP ${res.status}: ${await res.text()}`);
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let buf = "", first = null, last = null, tokens = 0;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let k;
    while ((k = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(0, k); buf = buf.slice(k + 2);
      if (!ev.startsWith("data: ")) continue;
      const data = ev.slice(6);
      if (data === "[DONE]") continue;
      const j = JSON.parse(data);
      if (j.usage && j.usage.completion_tokens) tokens = j.usage.completion_tokens;
      const c = j.choices && j.choices[0];
      if (c && c.delta && c.delta.content) {
        const now = performance.now();
        if (first === null) { first = now; stats.ttft.push(now - t0); }
        else stats.gap.push(now - last);
        last = now;
      }
    }
  }
  stats.tokens += tokens;
}

// A request that fails (a refused or dropped connection, an HTTP error) is
// counted and reported, not retried.
const stats = { ttft: [], gap: [], tokens: 0, errors: 0, first_error: null };
const t0 = performance.now();
await Promise.all(Array.from({ length: N }, async (_, c) => {
  for (let r = 0; r < R; r++) {
    try { await one(c * R + r, stats); }
    catch (e) { stats.errors++; stats.first_error ??= String(e.cause?.message ?? e.message); }
  }
}));
const wall = (performance.now() - t0) / 1000;
console.log(JSON.stringify({
  clients: N, requests: N * R, max_tokens: M, wall_s: +wall.toFixed(3),
  tokens: stats.tokens, tokens_per_s: +(stats.tokens / wall).toFixed(1),
  ttft_p50_ms: +pct(stats.ttft, 50).toFixed(2), ttft_p99_ms: +pct(stats.ttft, 99).toFixed(2),
  gap_p50_ms: +(pct(stats.gap, 50) ?? 0).toFixed(3), gap_p99_ms: +(pct(stats.gap, 99) ?? 0).toFixed(3),
  errors: stats.errors, first_error: stats.first_error
}));
