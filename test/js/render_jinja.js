// Renders chat templates with @huggingface/jinja, the reference the conformance test
// (test/jinja_conformance_test.exs) compares LlamaCppEx.Jinja with.
//
//   node test/js/render_jinja.js NPM_DIR < jobs.json
//
// stdin: a JSON array of {"template": source, "context": {...}}; stdout: a JSON array,
// one {"ok": rendered} or {"error": message} per job, in order. NPM_DIR is where
// scripts/npm_deps.sh installed the package.
"use strict";
const path = require("path");
const { Template } = require(path.join(process.argv[2], "node_modules", "@huggingface", "jinja"));

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => (input += chunk));
process.stdin.on("end", () => {
  const compiled = new Map();
  const results = JSON.parse(input).map(({ template, context }) => {
    try {
      if (!compiled.has(template)) {
        try {
          compiled.set(template, new Template(template));
        } catch (e) {
          compiled.set(template, e);
        }
      }
      const t = compiled.get(template);
      if (t instanceof Error) throw t;
      return { ok: t.render(context) };
    } catch (e) {
      return { error: String((e && e.message) || e) };
    }
  });
  process.stdout.write(JSON.stringify(results));
});
