// vscode-jsonrpc (the JSON-RPC library of VS Code's language client) as a host would use it, with
// newline framing: a MessageReader that reads one JSON text per line and a MessageWriter that writes
// one. Its logger would report any line that is not a JSON-RPC message; cancellation is its own
// CancellationToken, which sends $/cancelRequest. Prints one JSON summary line.
// Usage: node vscode_jsonrpc.mjs   (env SDWORKER_TEST_CMD: the worker command as a JSON array, SDWORKER_TEST_MODEL)
import { spawn } from "node:child_process";
import { createRequire } from "node:module";
import readline from "node:readline";

const require = createRequire(import.meta.url);
const { AbstractMessageReader, AbstractMessageWriter, CancellationTokenSource, createMessageConnection } = require("vscode-jsonrpc/node");

class NewlineReader extends AbstractMessageReader {
  constructor(stream) { super(); this.stream = stream; }
  listen(callback) {
    const rl = readline.createInterface({ input: this.stream });
    rl.on("line", (line) => {
      if (!line.trim()) return;
      try { callback(JSON.parse(line)); } catch (e) { this.fireError(e); }
    });
    rl.on("close", () => this.fireClose());
    return { dispose: () => rl.close() };
  }
}

class NewlineWriter extends AbstractMessageWriter {
  constructor(stream) { super(); this.stream = stream; }
  async write(msg) { this.stream.write(JSON.stringify(msg) + "\n"); }
  end() {}
}

const [cmd, ...args] = JSON.parse(process.env.SDWORKER_TEST_CMD);
const model = process.env.SDWORKER_TEST_MODEL;
const child = spawn(cmd, args, { stdio: ["pipe", "pipe", "inherit"] });
const exited = new Promise((resolve) => child.on("exit", (code) => resolve(code)));
const problems = [];
const logger = {
  error: (m) => problems.push(`error: ${m}`),
  warn: (m) => problems.push(`warn: ${m}`),
  info: () => {},
  log: () => {},
};
const conn = createMessageConnection(new NewlineReader(child.stdout), new NewlineWriter(child.stdin), logger);
const events = [];
const waiters = [];
function waitEvent(pred) {
  const seen = events.find(pred);
  return seen ? Promise.resolve(seen) : new Promise((resolve) => waiters.push({ pred, resolve }));
}
conn.onNotification((method, params) => {
  const ev = { method, params };
  events.push(ev);
  for (const w of waiters.splice(0)) (w.pred(ev) ? w.resolve(ev) : waiters.push(w));
});
conn.onError(([err]) => problems.push(`connection error: ${err}`));
conn.onUnhandledNotification((msg) => problems.push(`unhandled notification: ${msg.method}`));
conn.listen();

const out = { problems };
// A hang guard, never a pass criterion: report what happened so far and stop.
const guard = setTimeout(() => {
  problems.push("gave up waiting (SDWORKER_TEST_TIMEOUT_MS)");
  console.log(JSON.stringify(out));
  child.kill("SIGKILL");
  process.exit(1);
}, Number(process.env.SDWORKER_TEST_TIMEOUT_MS || 600000));
try {
  const ready = await waitEvent((e) => e.method === "event.ready");
  out.ready = { version: ready.params.data.version, has_text2img: ready.params.data.methods.includes("inference.text2img") };
  out.ping = (await conn.sendRequest("system.ping", {})).pong;

  const t2i = await conn.sendRequest("inference.text2img", { modelId: model, prompt: "a fox", steps: 2, width: 64, height: 64, seed: 7 });
  out.text2img = { png: t2i.images[0].base64.startsWith("iVBOR"), seed: t2i.images[0].seed };
  out.text2img_statuses = events.filter((e) => e.method === "event.session_status" && e.params.session_id === t2i.session_id).map((e) => e.params.data.status);

  const cts = new CancellationTokenSource();
  const long = conn.sendRequest("inference.text2img", { model_id: model, prompt: "long", steps: 150, width: 64, height: 64, seed: 1, session_id: "vscode-long" }, cts.token);
  await waitEvent((e) => e.method === "event.progress" && e.params.session_id === "vscode-long");
  cts.cancel();  // vscode-jsonrpc sends {"jsonrpc":"2.0","method":"$/cancelRequest","params":{"id":<that request's id>}}
  try {
    await long;
    out.cancel = { error_code: null };
  } catch (e) {
    out.cancel = { code: e.code, error_code: e.data && e.data.error_code };
  }
  out.cancel.statuses = events.filter((e) => e.method === "event.session_status" && e.params.session_id === "vscode-long").map((e) => e.params.data.status);
  out.after_cancel_ping = (await conn.sendRequest("system.ping", {})).pong;
} catch (e) {
  problems.push(`failed: ${e && e.stack ? e.stack : e}`);
}
conn.dispose();
child.stdin.end();
out.exit_code = await exited;
clearTimeout(guard);
console.log(JSON.stringify(out));
