// Drives LlamaCppEx.HTTP with the official `openai` npm client (run by
// test/http_clients_test.exs): every call must succeed through the client's
// own parsing, and the checks below must hold. Prints one JSON line of
// figures; exits non-zero on the first failure.
//   LCX_BASE_URL  http://127.0.0.1:PORT
//   LCX_API_KEY   the server's key
//   NODE_PATH     the cache dir's node_modules (scripts/npm_deps.sh)
import { createRequire } from "node:module";
import assert from "node:assert/strict";

const require = createRequire(import.meta.url);
const OpenAI = require("openai").default ?? require("openai");

const base = process.env.LCX_BASE_URL;
const key = process.env.LCX_API_KEY;
const client = new OpenAI({ baseURL: base + "/v1", apiKey: key, maxRetries: 0 });
const out = {};

// models
const models = await client.models.list();
const model = models.data[0].id;
assert.equal(models.data[0].object, "model");
out.model = model;

const messages = [{ role: "system", content: "You tell stories." }, { role: "user", content: "Tell me about a cat." }];

// chat, not streamed, greedy
const chat = await client.chat.completions.create({ model, messages, max_tokens: 24, temperature: 0 });
assert.equal(chat.object, "chat.completion");
assert.equal(chat.choices.length, 1);
assert.equal(chat.choices[0].message.role, "assistant");
assert.equal(typeof chat.choices[0].message.content, "string");
assert.ok(["stop", "length"].includes(chat.choices[0].finish_reason));
assert.ok(chat.usage.prompt_tokens > 0);
assert.equal(chat.usage.total_tokens, chat.usage.prompt_tokens + chat.usage.completion_tokens);
if (chat.choices[0].finish_reason === "length") assert.equal(chat.usage.completion_tokens, 24);
out.chat = chat.choices[0].message.content;

// the same, streamed: the deltas add up to the same greedy text
const stream = await client.chat.completions.create({
  model, messages, max_tokens: 24, temperature: 0, stream: true, stream_options: { include_usage: true }
});
let streamed = "";
let finish = null;
let usage = null;
let chunks = 0;
for await (const chunk of stream) {
  chunks++;
  assert.equal(chunk.object, "chat.completion.chunk");
  if (chunk.usage) usage = chunk.usage;
  for (const c of chunk.choices) {
    if (c.delta.content) streamed += c.delta.content;
    if (c.finish_reason) finish = c.finish_reason;
  }
}
assert.equal(streamed, out.chat);
assert.equal(finish, chat.choices[0].finish_reason);
assert.equal(usage.completion_tokens, chat.usage.completion_tokens);
out.stream_chunks = chunks;

// n choices, seeded: several choices, each with its own index
const multi = await client.chat.completions.create({ model, messages, max_tokens: 8, n: 3, seed: 7, temperature: 1.0 });
assert.deepEqual(multi.choices.map((c) => c.index), [0, 1, 2]);
out.n_texts = multi.choices.map((c) => c.message.content);

// logprobs
const lp = await client.chat.completions.create({ model, messages, max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 3 });
const content = lp.choices[0].logprobs.content;
assert.equal(content.length, lp.usage.completion_tokens);
for (const t of content) {
  assert.equal(t.top_logprobs.length, 3);
  assert.ok(t.logprob <= 0);
  // greedy, no grammar: the chosen token is the most likely one
  assert.equal(t.top_logprobs[0].token, t.token);
}

// response_format json_schema: the reply parses and follows the schema
const schema = { type: "object", properties: { color: { enum: ["red", "green"] } }, required: ["color"], additionalProperties: false };
const js = await client.chat.completions.create({
  model, messages, max_tokens: 32, temperature: 0,
  response_format: { type: "json_schema", json_schema: { name: "c", schema } }
});
const parsed = JSON.parse(js.choices[0].message.content);
assert.ok(["red", "green"].includes(parsed.color));
out.json = parsed;

// completions, not streamed and streamed
const prompt = "Once upon a time";
const comp = await client.completions.create({ model, prompt, max_tokens: 16, temperature: 0 });
assert.equal(comp.object, "text_completion");
const cstream = await client.completions.create({ model, prompt, max_tokens: 16, temperature: 0, stream: true });
let ctext = "";
for await (const chunk of cstream) for (const c of chunk.choices) ctext += c.text;
assert.equal(ctext, comp.choices[0].text);
out.completion = comp.choices[0].text;

// a batch of prompts
const batch = await client.completions.create({ model, prompt: ["The dog", "The cat"], max_tokens: 4, temperature: 0 });
assert.deepEqual(batch.choices.map((c) => c.index), [0, 1]);

// embeddings: base64 (the client's default) and float agree
const e64 = await client.embeddings.create({ model, input: ["a cat", "a dog"] });
const ef = await client.embeddings.create({ model, input: "a cat", encoding_format: "float" });
assert.equal(e64.data.length, 2);
assert.equal(e64.data[0].embedding.length, ef.data[0].embedding.length);
for (let i = 0; i < ef.data[0].embedding.length; i++)
  assert.ok(Math.abs(e64.data[0].embedding[i] - ef.data[0].embedding[i]) < 1e-6);
out.n_embd = ef.data[0].embedding.length;

// errors, as the client's error classes
async function rejects(promise, status, check) {
  try {
    await promise;
  } catch (e) {
    assert.equal(e.status, status, `expected ${status}, got ${e.status}: ${e.message}`);
    if (check) check(e);
    return;
  }
  assert.fail(`expected a ${status}`);
}
await rejects(client.chat.completions.create({ model, messages, temperature: "hot" }), 400, (e) => {
  assert.ok(e instanceof OpenAI.BadRequestError);
  assert.equal(e.param, "temperature");
});
await rejects(client.chat.completions.create({ model, messages: [] }), 400, (e) => assert.equal(e.param, "messages"));
await rejects(client.completions.create({ model, prompt: 12 }), 400, (e) => assert.equal(e.param, "prompt"));
const wrong = new OpenAI({ baseURL: base + "/v1", apiKey: key + "x", maxRetries: 0 });
await rejects(wrong.models.list(), 401, (e) => assert.ok(e instanceof OpenAI.AuthenticationError));
await rejects(client.models.retrieve("nope/nope"), 404);

console.log(JSON.stringify(out));
