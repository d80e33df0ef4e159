// SdWorkerHost.cs: a small .NET host for sdworker, in one file.
//
// It does what a real orchestrator does: spawns the worker as a child process with redirected
// stdin/stdout/stderr, reads stdout lines on a reader task, matches responses to requests through
// a request-id -> TaskCompletionSource map, and prints events as they arrive. Then it checks the
// contract (docs/protocol.md) end to end:
//
//   1. the first stdout line is the ready event (protocol 1, the methods used here listed);
//   2. inference.text2img (64x64, a few steps, fixed seed) succeeds with one PNG image, seed echoed;
//   3. a second, long job is cancelled with inference.cancel_session after its first progress
//      event, and the job's own response is error_code "cancelled";
//   4. inference.get_session_status / inference.get_session_logs of the first session;
//   5. system.shutdown, then the worker exits 0; every stdout line was a JSON object or array.
//
// Any failed check: a "FAIL: ..." line on stderr (with the worker's last stderr lines) and exit 1.
// Usage errors exit 2. Success prints "OK" and exits 0.
//
// Build and run (Mono; only the default references are needed: mscorlib, System, System.Core):
//   mcs -out:SdWorkerHost.exe SdWorkerHost.cs
//   mono SdWorkerHost.exe python -m sdworker --models-dir models --output-dir outputs
//
// JSON is read and written by the small Json class at the end of this file, so it builds with a
// bare Mono (Debian: mono-mcs + mono-runtime) and on .NET without extra packages. A production
// host would use System.Text.Json or Newtonsoft.Json instead; the wire format is plain JSON.
//
// Environment (optional): SDHOST_MODEL (default tiny-sdxl), SDHOST_STEPS (default 4),
// SDHOST_LONG_STEPS (default 100), SDHOST_TIMEOUT_S (per wait, default 300),
// SDHOST_VERBOSE=1 (echo the worker's stderr as it comes).

using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Linq;
using System.Text;
using System.Threading;
using System.Threading.Tasks;

namespace SdWorkerHostExample
{
    /// <summary>A failed contract check: the host prints it and exits 1.</summary>
    public class CheckFailed : Exception
    {
        public CheckFailed(string message) : base(message) { }
    }

    /// <summary>A JSON object with typed accessors (the parsed form is Dictionary/List/string/double/long/bool/null).</summary>
    public class JObj
    {
        public readonly Dictionary<string, object> Map;
        public JObj(Dictionary<string, object> map) { Map = map; }

        public object Get(string key) { object v; return Map.TryGetValue(key, out v) ? v : null; }
        public bool Has(string key) { return Map.ContainsKey(key); }
        public string Str(string key) { return Get(key) as string; }
        public JObj Obj(string key) { var d = Get(key) as Dictionary<string, object>; return d == null ? null : new JObj(d); }
        public List<object> Arr(string key) { return Get(key) as List<object>; }
        public bool? Bool(string key) { var v = Get(key); return v is bool ? (bool?)(bool)v : null; }
        public double? Num(string key)
        {
            var v = Get(key);
            if (v is long) return (long)v;
            if (v is double) return (double)v;
            return null;
        }
        public override string ToString() { return Json.Write(Map); }
    }

    public class WorkerClient : IDisposable
    {
        readonly Process _proc;
        readonly StreamWriter _stdin;
        readonly object _writeLock = new object();
        readonly ConcurrentDictionary<string, TaskCompletionSource<JObj>> _pending =
            new ConcurrentDictionary<string, TaskCompletionSource<JObj>>();
        // request id -> completed by that request's first progress event
        readonly ConcurrentDictionary<string, TaskCompletionSource<JObj>> _firstProgress =
            new ConcurrentDictionary<string, TaskCompletionSource<JObj>>();
        // RunContinuationsAsynchronously everywhere: awaiting code must never run on (and block) the reader task.
        readonly TaskCompletionSource<JObj> _ready = new TaskCompletionSource<JObj>(TaskCreationOptions.RunContinuationsAsynchronously);
        readonly Queue<string> _stderrTail = new Queue<string>();
        readonly bool _verbose;
        readonly Task _reader;
        int _nextId;

        public int LinesRead;
        public int EventsSeen;
        public readonly List<string> Violations = new List<string>(); // stdout lines that break the protocol
        public readonly ConcurrentDictionary<string, int> ProgressCount = new ConcurrentDictionary<string, int>();

        public WorkerClient(string fileName, IEnumerable<string> args, bool verbose)
        {
            _verbose = verbose;
            var psi = new ProcessStartInfo
            {
                FileName = fileName,
                Arguments = string.Join(" ", args.Select(QuoteArg)),
                UseShellExecute = false,
                RedirectStandardInput = true,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                CreateNoWindow = true,
                StandardOutputEncoding = new UTF8Encoding(false),
                StandardErrorEncoding = new UTF8Encoding(false),
            };
            _proc = new Process { StartInfo = psi, EnableRaisingEvents = true };
            _proc.ErrorDataReceived += (s, e) =>
            {
                if (e.Data == null) return;
                lock (_stderrTail)
                {
                    _stderrTail.Enqueue(e.Data);
                    while (_stderrTail.Count > 40) _stderrTail.Dequeue();
                }
                if (_verbose) Console.Error.WriteLine("[worker] " + e.Data);
            };
            try
            {
                if (!_proc.Start()) throw new CheckFailed("could not start " + fileName);
            }
            catch (System.ComponentModel.Win32Exception ex)
            {
                throw new CheckFailed("could not start " + fileName + ": " + ex.Message);
            }
            _proc.BeginErrorReadLine();
            // Our own UTF-8 writer without a BOM on the raw stream (the worker would tolerate a BOM
            // and CRLF too; .NET Framework's StandardInput may send both).
            _stdin = new StreamWriter(_proc.StandardInput.BaseStream, new UTF8Encoding(false)) { NewLine = "\n", AutoFlush = false };
            _reader = Task.Run(() => ReadLoop());
        }

        public int Pid { get { return _proc.Id; } }
        public Task<JObj> Ready { get { return _ready.Task; } }

        public string StderrTail()
        {
            lock (_stderrTail) return string.Join("\n", _stderrTail);
        }

        // ---- reading --------------------------------------------------------------------------

        async Task ReadLoop()
        {
            var stdout = _proc.StandardOutput;
            try
            {
                string line;
                while ((line = await stdout.ReadLineAsync().ConfigureAwait(false)) != null)
                {
                    LinesRead++;
                    Handle(line);
                }
            }
            catch (Exception ex)
            {
                Violations.Add("reader failed: " + ex.Message);
            }
            var eof = new CheckFailed("the worker closed stdout (exit code " + (_proc.HasExited ? _proc.ExitCode.ToString() : "?") + ")");
            _ready.TrySetException(eof);
            foreach (var kv in _pending) kv.Value.TrySetException(eof);
            foreach (var kv in _firstProgress) kv.Value.TrySetException(eof);
        }

        void Handle(string line)
        {
            object doc;
            try { doc = Json.Parse(line); }
            catch (FormatException ex)
            {
                Violations.Add("not JSON (" + ex.Message + "): " + Shorten(line));
                Console.WriteLine("!! stray stdout line: " + Shorten(line));
                return;
            }
            if (doc is List<object>) // a JSON-RPC batch answer: this host sends none
            {
                Console.WriteLine("<< batch " + Shorten(line));
                return;
            }
            var map = doc as Dictionary<string, object>;
            if (map == null)
            {
                Violations.Add("not a JSON object or array: " + Shorten(line));
                return;
            }
            var msg = new JObj(map);
            var type = msg.Str("type");
            if (type == "event")
            {
                EventsSeen++;
                OnEvent(msg);
            }
            else if (type == "response")
            {
                var id = msg.Str("request_id");
                TaskCompletionSource<JObj> tcs;
                if (id != null && _pending.TryRemove(id, out tcs))
                {
                    Console.WriteLine("<< response " + id + " success=" + (msg.Bool("success") == true ? "true" : "false") +
                                      (msg.Bool("success") == true ? "" : " error_code=" + msg.Str("error_code")));
                    tcs.TrySetResult(msg);
                }
                else
                {
                    Violations.Add("response nobody waits for (unknown or duplicate id " + (id ?? "null") + "): " + Shorten(line));
                }
            }
            else
            {
                Violations.Add("unexpected message: " + Shorten(line));
            }
        }

        void OnEvent(JObj msg)
        {
            var name = msg.Str("event");
            var data = msg.Obj("data") ?? new JObj(new Dictionary<string, object>());
            var rid = msg.Str("request_id");
            if (name == "ready")
            {
                Console.WriteLine("<< event ready: version " + data.Str("version") + ", protocol " + data.Num("protocol") + ", pid " + data.Num("pid"));
                _ready.TrySetResult(msg);
                return;
            }
            if (name == "progress")
            {
                Console.WriteLine(string.Format(CultureInfo.InvariantCulture, "<< event progress {0}: step {1}/{2} ({3}%)",
                    rid, data.Num("step"), data.Num("total_steps"), data.Num("percent")));
                if (rid != null)
                {
                    ProgressCount.AddOrUpdate(rid, 1, (k, n) => n + 1);
                    TaskCompletionSource<JObj> first;
                    if (_firstProgress.TryGetValue(rid, out first)) first.TrySetResult(msg);
                }
                return;
            }
            if (name == "session_status")
            {
                Console.WriteLine("<< event session_status " + rid + ": " + data.Str("status"));
                return;
            }
            Console.WriteLine("<< event " + name + " " + rid);
        }

        // ---- writing --------------------------------------------------------------------------

        public string NewId(string prefix)
        {
            return prefix + "-" + Interlocked.Increment(ref _nextId).ToString(CultureInfo.InvariantCulture);
        }

        /// <summary>Send a native request; the task completes with its response.</summary>
        public Task<JObj> Request(string method, Dictionary<string, object> data, string requestId = null)
        {
            var id = requestId ?? NewId("req");
            var tcs = new TaskCompletionSource<JObj>(TaskCreationOptions.RunContinuationsAsynchronously);
            if (!_pending.TryAdd(id, tcs)) throw new CheckFailed("request id " + id + " is already in flight");
            var envelope = new Dictionary<string, object>
            {
                { "type", method },
                { "request_id", id },
                { "data", data ?? new Dictionary<string, object>() },
            };
            var line = Json.Write(envelope);
            Console.WriteLine(">> " + method + " " + id);
            lock (_writeLock)
            {
                _stdin.WriteLine(line);
                _stdin.Flush();
            }
            return tcs.Task;
        }

        /// <summary>Completes with the first progress event of a request (register before sending it).</summary>
        public Task<JObj> FirstProgress(string requestId)
        {
            var tcs = _firstProgress.GetOrAdd(requestId, k => new TaskCompletionSource<JObj>(TaskCreationOptions.RunContinuationsAsynchronously));
            return tcs.Task;
        }

        public bool WaitForExit(int milliseconds)
        {
            if (!_proc.WaitForExit(milliseconds)) return false;
            _proc.WaitForExit(); // lets the async stderr reader finish
            return true;
        }

        public int ExitCode { get { return _proc.ExitCode; } }
        public Task ReaderDone { get { return _reader; } }
        public int PendingCount { get { return _pending.Count; } }

        public void CloseStdin()
        {
            lock (_writeLock)
            {
                try { _stdin.Close(); } catch (IOException) { }
            }
        }

        public void Dispose()
        {
            try { if (!_proc.HasExited) _proc.Kill(); } catch (InvalidOperationException) { }
            _proc.Dispose();
        }

        static string Shorten(string s) { return s.Length <= 300 ? s : s.Substring(0, 300) + "..."; }

        /// <summary>Quote one argument the way the Windows/.NET command-line parser (and Mono on Unix) splits it.</summary>
        public static string QuoteArg(string arg)
        {
            if (arg.Length > 0 && arg.IndexOfAny(new[] { ' ', '\t', '\n', '"', '\'' }) < 0) return arg;
            var sb = new StringBuilder("\"");
            int backslashes = 0;
            foreach (var c in arg)
            {
                if (c == '\\') { backslashes++; continue; }
                if (c == '"') { sb.Append('\\', backslashes * 2 + 1); sb.Append('"'); }
                else { sb.Append('\\', backslashes); sb.Append(c); }
                backslashes = 0;
            }
            sb.Append('\\', backslashes * 2);
            sb.Append('"');
            return sb.ToString();
        }
    }

    public static class Program
    {
        static readonly byte[] PngSignature = { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A };
        static int _timeoutMs = 300000;

        public static int Main(string[] args)
        {
            if (args.Length == 0)
            {
                Console.Error.WriteLine("usage: mono SdWorkerHost.exe <worker command> [args...]");
                Console.Error.WriteLine("  e.g. mono SdWorkerHost.exe python -m sdworker --models-dir models --output-dir outputs");
                return 2;
            }
            _timeoutMs = EnvInt("SDHOST_TIMEOUT_S", 300) * 1000;
            WorkerClient worker = null;
            try
            {
                worker = new WorkerClient(args[0], args.Skip(1), Environment.GetEnvironmentVariable("SDHOST_VERBOSE") == "1");
                Run(worker).GetAwaiter().GetResult();
                Console.WriteLine("OK: all checks passed");
                return 0;
            }
            catch (Exception ex)
            {
                var inner = ex is AggregateException ? ((AggregateException)ex).Flatten().InnerException : ex;
                Console.Out.Flush();
                Console.Error.WriteLine("FAIL: " + (inner is CheckFailed ? inner.Message : inner.ToString()));
                if (worker != null)
                {
                    var tail = worker.StderrTail();
                    if (tail.Length > 0) Console.Error.WriteLine("--- last lines of the worker's stderr ---\n" + tail);
                }
                return 1;
            }
            finally
            {
                if (worker != null) worker.Dispose();
            }
        }

        static async Task Run(WorkerClient w)
        {
            var model = Environment.GetEnvironmentVariable("SDHOST_MODEL") ?? "tiny-sdxl";
            var steps = EnvInt("SDHOST_STEPS", 4);
            var longSteps = EnvInt("SDHOST_LONG_STEPS", 100);
            const long seed = 1234;

            // 1. ready ---------------------------------------------------------------------------
            var ready = await Within(w.Ready, "the ready event");
            var rdata = ready.Obj("data");
            Check(rdata != null, "ready event has no data: " + ready);
            Check(rdata.Num("protocol") == 1, "ready.data.protocol is " + rdata.Num("protocol") + ", expected 1");
            if (rdata.Num("pid") != w.Pid) // differs when the command is a wrapper (a shell script, uv run, ...)
                Console.WriteLine("   note: ready.data.pid " + rdata.Num("pid") + " is not the child's pid " + w.Pid);
            var methods = (rdata.Arr("methods") ?? new List<object>()).OfType<string>().ToList();
            foreach (var m in new[] { "inference.text2img", "inference.cancel_session", "inference.get_session_status", "inference.get_session_logs", "system.shutdown" })
                Check(methods.Contains(m), "ready.data.methods lacks " + m);
            Check(w.LinesRead == 1, "the ready event was not the first stdout line");

            // 2. one image -------------------------------------------------------------------------
            var gen = await Within(w.Request("inference.text2img", new Dictionary<string, object>
            {
                { "model_id", model },
                { "prompt", "a lighthouse on a cliff at dusk" },
                { "negative_prompt", "blurry" },
                { "width", 64L },
                { "height", 64L },
                { "steps", (long)steps },
                { "guidance_scale", 5.0 },
                { "seed", seed },
            }, "gen-1"), "the text2img response");
            Check(gen.Bool("success") == true, "text2img failed: " + gen.Str("error_code") + ": " + gen.Str("error"));
            var gdata = gen.Obj("data");
            Check(gdata != null, "text2img response has no data");
            var images = gdata.Arr("images");
            Check(images != null && images.Count == 1, "expected 1 image, got " + (images == null ? "none" : images.Count.ToString()));
            var img = new JObj((Dictionary<string, object>)images[0]);
            Check(img.Num("seed") == seed, "image seed " + img.Num("seed") + " is not the requested " + seed);
            Check(img.Num("width") == 64 && img.Num("height") == 64, "image is " + img.Num("width") + "x" + img.Num("height") + ", expected 64x64");
            var b64 = img.Str("base64");
            Check(!string.IsNullOrEmpty(b64), "image has no base64");
            byte[] png;
            try { png = Convert.FromBase64String(b64); }
            catch (FormatException) { throw new CheckFailed("image base64 does not decode"); }
            Check(png.Length > PngSignature.Length && png.Take(8).SequenceEqual(PngSignature), "image bytes do not start with the PNG signature");
            Check(gdata.Str("session_id") == "gen-1", "result session_id is " + gdata.Str("session_id") + ", expected gen-1");
            Console.WriteLine("   image: " + png.Length + " bytes of PNG, seed " + img.Num("seed"));

            // 3. a long job, cancelled after its first progress event -----------------------------
            var firstProgress = w.FirstProgress("gen-long");
            var longJob = w.Request("inference.text2img", new Dictionary<string, object>
            {
                { "model_id", model },
                { "prompt", "a job that will be cancelled" },
                { "width", 64L },
                { "height", 64L },
                { "steps", (long)longSteps },
                { "seed", 7L },
            }, "gen-long");
            var progress = await Within(firstProgress, "the long job's first progress event");
            Check(progress.Obj("data").Num("total_steps") == longSteps, "progress total_steps is not " + longSteps);
            var cancel = await Within(w.Request("inference.cancel_session", new Dictionary<string, object> { { "session_id", "gen-long" } }), "the cancel_session response");
            Check(cancel.Bool("success") == true, "cancel_session failed: " + cancel.Str("error"));
            Check(cancel.Obj("data").Bool("cancelled") == true, "cancel_session did not cancel: " + cancel.Obj("data"));
            var cancelled = await Within(longJob, "the cancelled job's response");
            Check(cancelled.Bool("success") == false, "the cancelled job succeeded anyway");
            Check(cancelled.Str("error_code") == "cancelled", "the cancelled job's error_code is " + cancelled.Str("error_code") + ", expected cancelled");
            int seen;
            w.ProgressCount.TryGetValue("gen-long", out seen);
            Check(seen < longSteps, "the long job ran all its " + longSteps + " steps before stopping");

            // 4. status and logs of the first session ---------------------------------------------
            var status = await Within(w.Request("inference.get_session_status", new Dictionary<string, object> { { "session_id", "gen-1" } }), "get_session_status");
            Check(status.Bool("success") == true, "get_session_status failed: " + status.Str("error"));
            var sdata = status.Obj("data");
            Check(sdata.Str("session_id") == "gen-1", "session_id is " + sdata.Str("session_id"));
            Check(sdata.Str("request_id") == "gen-1", "request_id is " + sdata.Str("request_id"));
            Check(sdata.Str("status") == "completed", "status is " + sdata.Str("status") + ", expected completed");
            Check(sdata.Str("model_id") == model, "model_id is " + sdata.Str("model_id"));
            var prog = sdata.Obj("progress");
            Check(prog != null && prog.Num("percent") == 100 && prog.Num("step") == steps && prog.Num("total_steps") == steps,
                  "progress is " + (prog == null ? "missing" : prog.ToString()) + ", expected " + steps + "/" + steps + " at 100%");
            Check(IsIsoUtc(sdata.Str("started_at")) && IsIsoUtc(sdata.Str("finished_at")), "started_at/finished_at are not ISO 8601 UTC: " + sdata.Str("started_at") + ", " + sdata.Str("finished_at"));

            var longStatus = await Within(w.Request("inference.get_session_status", new Dictionary<string, object> { { "session_id", "gen-long" } }), "get_session_status of the cancelled job");
            Check(longStatus.Bool("success") == true && longStatus.Obj("data").Str("status") == "cancelled",
                  "the cancelled session's status is " + (longStatus.Obj("data") == null ? longStatus.ToString() : longStatus.Obj("data").Str("status")));

            var logs = await Within(w.Request("inference.get_session_logs", new Dictionary<string, object> { { "session_id", "gen-1" } }), "get_session_logs");
            Check(logs.Bool("success") == true, "get_session_logs failed: " + logs.Str("error"));
            var ldata = logs.Obj("data");
            var lines = ldata.Arr("logs");
            Check(ldata.Str("session_id") == "gen-1", "logs session_id is " + ldata.Str("session_id"));
            Check(lines != null && lines.Count > 0, "get_session_logs returned no log lines");
            Check(ldata.Num("count") == lines.Count, "logs count " + ldata.Num("count") + " is not the number of lines " + lines.Count);
            foreach (var entry in lines)
            {
                var e = entry as Dictionary<string, object>;
                Check(e != null && e.ContainsKey("time") && e.ContainsKey("level") && e["message"] is string, "malformed log entry: " + Json.Write(entry));
            }
            Console.WriteLine("   session gen-1: " + sdata.Str("status") + ", " + lines.Count + " log lines, first: " + new JObj((Dictionary<string, object>)lines[0]).Str("message"));

            // 5. shutdown ---------------------------------------------------------------------------
            var bye = await Within(w.Request("system.shutdown", null), "the shutdown response");
            Check(bye.Bool("success") == true && bye.Obj("data").Bool("shutting_down") == true, "system.shutdown was not accepted: " + bye);
            Check(w.WaitForExit(60000), "the worker did not exit within 60 s of system.shutdown");
            Check(w.ExitCode == 0, "the worker exited with code " + w.ExitCode + ", expected 0");
            await Within(w.ReaderDone, "the end of the worker's stdout");
            w.CloseStdin();
            Check(w.PendingCount == 0, w.PendingCount + " request(s) never got a response");
            Check(w.Violations.Count == 0, "protocol violations on stdout:\n  " + string.Join("\n  ", w.Violations));
            Console.WriteLine("   worker exited 0; " + w.LinesRead + " stdout lines, " + w.EventsSeen + " events, all JSON");
        }

        static async Task<T> Within<T>(Task<T> task, string what)
        {
            var done = await Task.WhenAny(task, Task.Delay(_timeoutMs)).ConfigureAwait(false);
            if (done != task) throw new CheckFailed("timed out after " + _timeoutMs / 1000 + " s waiting for " + what);
            return await task.ConfigureAwait(false);
        }

        static async Task Within(Task task, string what)
        {
            var done = await Task.WhenAny(task, Task.Delay(_timeoutMs)).ConfigureAwait(false);
            if (done != task) throw new CheckFailed("timed out after " + _timeoutMs / 1000 + " s waiting for " + what);
            await task.ConfigureAwait(false);
        }

        static void Check(bool ok, string message)
        {
            if (!ok) throw new CheckFailed(message);
        }

        static bool IsIsoUtc(string s)
        {
            DateTime t;
            return s != null && s.EndsWith("Z", StringComparison.Ordinal) &&
                   DateTime.TryParse(s, CultureInfo.InvariantCulture, DateTimeStyles.AdjustToUniversal | DateTimeStyles.AssumeUniversal, out t);
        }

        static int EnvInt(string name, int fallback)
        {
            int v;
            var s = Environment.GetEnvironmentVariable(name);
            return s != null && int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out v) ? v : fallback;
        }
    }

    /// <summary>
    /// Minimal JSON (RFC 8259): Parse gives Dictionary&lt;string, object&gt;, List&lt;object&gt;, string,
    /// long (integers that fit), double, bool or null; Write serializes the same types (plus int/float).
    /// </summary>
    public static class Json
    {
        public static object Parse(string text)
        {
            int i = 0;
            var value = ParseValue(text, ref i, 0);
            SkipWs(text, ref i);
            if (i != text.Length) throw new FormatException("trailing characters at " + i);
            return value;
        }

        const int MaxDepth = 512;

        static void SkipWs(string s, ref int i)
        {
            while (i < s.Length && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
        }

        static object ParseValue(string s, ref int i, int depth)
        {
            if (depth > MaxDepth) throw new FormatException("nesting too deep");
            SkipWs(s, ref i);
            if (i >= s.Length) throw new FormatException("unexpected end");
            char c = s[i];
            if (c == '{')
            {
                i++;
                var map = new Dictionary<string, object>();
                SkipWs(s, ref i);
                if (i < s.Length && s[i] == '}') { i++; return map; }
                while (true)
                {
                    SkipWs(s, ref i);
                    if (i >= s.Length || s[i] != '"') throw new FormatException("expected a key at " + i);
                    var key = ParseString(s, ref i);
                    SkipWs(s, ref i);
                    if (i >= s.Length || s[i] != ':') throw new FormatException("expected ':' at " + i);
                    i++;
                    map[key] = ParseValue(s, ref i, depth + 1);
                    SkipWs(s, ref i);
                    if (i < s.Length && s[i] == ',') { i++; continue; }
                    if (i < s.Length && s[i] == '}') { i++; return map; }
                    throw new FormatException("expected ',' or '}' at " + i);
                }
            }
            if (c == '[')
            {
                i++;
                var list = new List<object>();
                SkipWs(s, ref i);
                if (i < s.Length && s[i] == ']') { i++; return list; }
                while (true)
                {
                    list.Add(ParseValue(s, ref i, depth + 1));
                    SkipWs(s, ref i);
                    if (i < s.Length && s[i] == ',') { i++; continue; }
                    if (i < s.Length && s[i] == ']') { i++; return list; }
                    throw new FormatException("expected ',' or ']' at " + i);
                }
            }
            if (c == '"') return ParseString(s, ref i);
            if (Lit(s, ref i, "true")) return true;
            if (Lit(s, ref i, "false")) return false;
            if (Lit(s, ref i, "null")) return null;
            if (c == '-' || (c >= '0' && c <= '9')) return ParseNumber(s, ref i);
            throw new FormatException("unexpected character '" + c + "' at " + i);
        }

        static bool Lit(string s, ref int i, string word)
        {
            if (string.CompareOrdinal(s, i, word, 0, word.Length) != 0) return false;
            i += word.Length;
            return true;
        }

        static object ParseNumber(string s, ref int i)
        {
            int start = i;
            if (s[i] == '-') i++;
            while (i < s.Length && "0123456789+-.eE".IndexOf(s[i]) >= 0) i++;
            var tok = s.Substring(start, i - start);
            long l;
            if (tok.IndexOfAny(new[] { '.', 'e', 'E' }) < 0 && long.TryParse(tok, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out l)) return l;
            double d;
            if (double.TryParse(tok, NumberStyles.Float, CultureInfo.InvariantCulture, out d)) return d;
            throw new FormatException("bad number '" + tok + "' at " + start);
        }

        static string ParseString(string s, ref int i)
        {
            i++; // opening quote
            var sb = new StringBuilder();
            while (true)
            {
                if (i >= s.Length) throw new FormatException("unterminated string");
                char c = s[i++];
                if (c == '"') return sb.ToString();
                if (c == '\\')
                {
                    if (i >= s.Length) throw new FormatException("unterminated escape");
                    char e = s[i++];
                    switch (e)
                    {
                        case '"': sb.Append('"'); break;
                        case '\\': sb.Append('\\'); break;
                        case '/': sb.Append('/'); break;
                        case 'b': sb.Append('\b'); break;
                        case 'f': sb.Append('\f'); break;
                        case 'n': sb.Append('\n'); break;
                        case 'r': sb.Append('\r'); break;
                        case 't': sb.Append('\t'); break;
                        case 'u':
                            if (i + 4 > s.Length) throw new FormatException("short \\u escape");
                            sb.Append((char)int.Parse(s.Substring(i, 4), NumberStyles.HexNumber, CultureInfo.InvariantCulture));
                            i += 4;
                            break;
                        default: throw new FormatException("bad escape \\" + e);
                    }
                }
                else if (c < 0x20) throw new FormatException("control character in string");
                else sb.Append(c);
            }
        }

        public static string Write(object value)
        {
            var sb = new StringBuilder();
            WriteValue(sb, value);
            return sb.ToString();
        }

        static void WriteValue(StringBuilder sb, object v)
        {
            if (v == null) { sb.Append("null"); return; }
            var str = v as string;
            if (str != null) { WriteString(sb, str); return; }
            if (v is bool) { sb.Append((bool)v ? "true" : "false"); return; }
            if (v is int || v is long) { sb.Append(Convert.ToInt64(v).ToString(CultureInfo.InvariantCulture)); return; }
            if (v is double || v is float)
            {
                var d = Convert.ToDouble(v);
                if (double.IsNaN(d) || double.IsInfinity(d)) throw new ArgumentException("JSON has no NaN or Infinity");
                sb.Append(d.ToString("R", CultureInfo.InvariantCulture));
                return;
            }
            var map = v as IDictionary<string, object>;
            if (map != null)
            {
                sb.Append('{');
                bool first = true;
                foreach (var kv in map)
                {
                    if (!first) sb.Append(',');
                    first = false;
                    WriteString(sb, kv.Key);
                    sb.Append(':');
                    WriteValue(sb, kv.Value);
                }
                sb.Append('}');
                return;
            }
            var list = v as System.Collections.IEnumerable;
            if (list != null)
            {
                sb.Append('[');
                bool first = true;
                foreach (var item in list)
                {
                    if (!first) sb.Append(',');
                    first = false;
                    WriteValue(sb, item);
                }
                sb.Append(']');
                return;
            }
            throw new ArgumentException("cannot write " + v.GetType().Name + " as JSON");
        }

        static void WriteString(StringBuilder sb, string s)
        {
            sb.Append('"');
            foreach (var c in s)
            {
                switch (c)
                {
                    case '"': sb.Append("\\\""); break;
                    case '\\': sb.Append("\\\\"); break;
                    case '\n': sb.Append("\\n"); break;
                    case '\r': sb.Append("\\r"); break;
                    case '\t': sb.Append("\\t"); break;
                    default:
                        if (c < 0x20 || c == '\u2028' || c == '\u2029') sb.Append("\\u").Append(((int)c).ToString("x4"));
                        else sb.Append(c);
                        break;
                }
            }
            sb.Append('"');
        }
    }
}
