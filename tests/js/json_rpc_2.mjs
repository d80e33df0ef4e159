// The npm package json-rpc-2.0 as a host would use it: the worker is a child process, every stdout
// line goes to JSONRPCServerAndClient.receiveAndSend (which rejects anything that is not JSON-RPC),
// requests go out as one JSON text per line. Prints one JSON summary line; tests/test_jsonrpc_clients.py reads it.
// Usage: node json_rpc_2.mjs   (env SDWORKER_TEST_CMD: the worker command as a JSON array, SDWORKER_TEST_MODEL)
import { spawn } from "node:child_process";
import readline from "node:readline";
import { JSONRPCClient, JSONRPCServer, JSONRPCServerAndClient } from "json-rpc-2.0";

const [cmd, ...args] = JSON.parse(process.env.SDWORKER_TEST_CMD);
const model = process.env.SDWORKER_TEST_MODEL;
const child = spawn(cmd, args, { stdio: ["pipe", "pipe", "inherit"] });
const problems = [];
const events = [];
let lastId = 0;

const rpc = new JSONRPCServerAndClient(
  new JSONRPCServer(),
  new JSONRPCClient((payload) => { child.stdin.write(JSON.stringify(payload) + "\n"); }, () => ++lastId),
  { errorListener: (message, data) => problems.push(`${message}: ${JSON.stringify(data).slice(0, 200)}`) },
);
const waiters = [];
function waitEvent(pred) {
  const seen = events.find(pred);
  return seen ? Promise.resolve(seen) : new Promise((resolve) => waiters.push({ pred, resolve }));
}
for (const name of ["ready", "progress", "session_status"]) {
  rpc.addMethod(`event.${name}`, (params) => {
    const ev = { name, params };
    events.push(ev);
    for (const w of waiters.splice(0)) (w.pred(ev) ? w.resolve(ev) : waiters.push(w));
  });
}
readline.createInterface({ input: child.stdout }).on("line", (line) => {
  let doc;
  try { doc = JSON.parse(line); } catch (e) { problems.push(`not JSON: ${line.slice(0, 200)}`); return; }
  rpc.receiveAndSend(doc).catch((e) => problems.push(`receiveAndSend: ${e}`));
});
const exited = new Promise((resolve) => child.on("exit", (code) => resolve(code)));

const out = { problems };
// A hang guard, never a pass criterion: report what happened so far and stop.
const guard = setTimeout(() => {
  problems.push("gave up waiting (SDWORKER_TEST_TIMEOUT_MS)");
  console.log(JSON.stringify(out));
  child.kill("SIGKILL");
  process.exit(1);
}, Number(process.env.SDWORKER_TEST_TIMEOUT_MS || 600000));
try {
  const ready = await waitEvent((e) => e.name === "ready");
  out.ready = { version: ready.params.data.version, has_text2img: ready.params.data.methods.includes("inference.text2img") };
  out.ping = (await rpc.request("system.ping", {})).pong;

  const t2i = await rpc.request("inference.text2img", { modelId: model, prompt: "a fox", steps: 2, width: 64, height: 64, seed: 7 });
  const t2iId = String(lastId);
  out.text2img = { png: t2i.images[0].base64.startsWith("iVBOR"), seed: t2i.images[0].seed };
  out.text2img_statuses = events.filter((e) => e.name === "session_status" && e.params.request_id === t2iId).map((e) => e.params.data.status);

  const long = rpc.request("inference.text2img", { model_id: model, prompt: "long", steps: 150, width: 64, height: 64, seed: 1 });
  const longId = lastId;
  await waitEvent((e) => e.name === "progress" && e.params.request_id === String(longId));
  rpc.notify("$/cancelRequest", { id: longId });
  try {
    await long;
    out.cancel = { error_code: null };
  } catch (e) {
    out.cancel = { code: e.code, error_code: e.data && e.data.error_code };
  }
  out.cancel.statuses = events.filter((e) => e.name === "session_status" && e.params.request_id === String(longId)).map((e) => e.params.data.status);
  out.after_cancel_ping = (await rpc.request("system.ping", {})).pong;
} catch (e) {
  problems.push(`failed: ${e && e.stack ? e.stack : e}`);
}
child.stdin.end();
out.exit_code = await exited;
clearTimeout(guard);
console.log(JSON.stringify(out));
