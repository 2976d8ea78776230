// The watcher's rules with a scripted socket and API: no network.
import assert from "node:assert/strict";
import { test } from "node:test";

import { backoffDelay, followsOn, watchJob } from "../src/index.js";

const JOB = "0f8fad5b-d9cb-469f-a165-70867728950e";

/** A Socket.IO client socket driven by the test. */
class FakeSocket {
  constructor(url) {
    this.url = url;
    this.connected = false;
    this.handlers = new Map();
    this.emitted = [];
    this.closed = false;
  }
  on(name, fn) {
    this.handlers.set(name, fn);
    return this;
  }
  fire(name, ...args) {
    this.handlers.get(name)?.(...args);
  }
  timeout() {
    return this;
  }
  emit(name, data, callback) {
    this.emitted.push({ name, data, callback });
  }
  subscribes() {
    return this.emitted.filter((e) => e.name === "subscribe");
  }
  open() {
    this.connected = true;
    this.fire("connect");
  }
  removeAllListeners() {
    this.handlers.clear();
  }
  close() {
    this.connected = false;
    this.closed = true;
  }
}

function fakeIo() {
  const sockets = [];
  const io = (url) => {
    const socket = new FakeSocket(url);
    sockets.push(socket);
    return socket;
  };
  return { io, sockets };
}

const event = (seq, extra = {}) => ({
  job_id: JOB,
  seq,
  type: "progress",
  status: "running",
  progress: seq,
  step: "s",
  ...extra,
});
const jobView = (seq, status = "running") => ({ id: JOB, seq, status, progress: 0, step: "s" });

test("the nth retry waits 1 s x 1.5^n, capped at 30 s", () => {
  const delays = Array.from({ length: 12 }, (_, n) => backoffDelay(n, 1000, 1.5, 30000));
  assert.deepEqual(delays.slice(0, 4), [1000, 1500, 2250, 3375]);
  assert.equal(delays[8], 1000 * 1.5 ** 8);
  assert.equal(delays[9], 30000);
  assert.equal(delays[11], 30000);
});

test("an event follows on from the next seq, or from a coalesced run (prev_seq)", () => {
  assert.ok(followsOn(4, { seq: 5 }));
  assert.ok(!followsOn(4, { seq: 6 }));
  assert.ok(followsOn(4, { seq: 9, prev_seq: 4 }));
  assert.ok(followsOn(6, { seq: 9, prev_seq: 4 }));
  assert.ok(!followsOn(3, { seq: 9, prev_seq: 4 }));
});

test("repeats are dropped, a gap resubscribes with the last seq, and the end is reported", async () => {
  const { io, sockets } = fakeIo();
  const seen = [];
  const watcher = watchJob(JOB, {
    socketUrl: "http://notifier.test",
    token: "t",
    io,
    onEvent: (e) => seen.push(e.seq),
  });
  const socket = sockets[0];
  socket.open();
  // a live event before the ack waits for it; the ack's missed events come first
  socket.fire("job_event", event(3));
  const [first] = socket.subscribes();
  assert.deepEqual(first.data, { job_id: JOB, last_seq: 0 });
  first.callback(null, { ok: true, job: jobView(2), missed: [event(1), event(2)] });
  assert.deepEqual(seen, [1, 2, 3]);
  // a repeat is dropped; a coalesced run is not a gap
  socket.fire("job_event", event(3));
  socket.fire("job_event", event(6, { prev_seq: 3 }));
  assert.deepEqual(seen, [1, 2, 3, 6]);
  // a gap asks again with the last seq
  socket.fire("job_event", event(9));
  const again = socket.subscribes()[1];
  assert.deepEqual(again.data, { job_id: JOB, last_seq: 6 });
  socket.fire("job_event", event(10, { type: "completed", status: "completed" }));
  again.callback(null, { ok: true, job: jobView(9), missed: [event(7), event(8), event(9)] });
  assert.deepEqual(seen, [1, 2, 3, 6, 7, 8, 9, 10]);
  const job = await watcher.done;
  assert.equal(job.status, "completed");
  assert.equal(watcher.mode, "done");
  assert.ok(socket.closed);
});

test("a dropped connection reconnects to the next URL and resubscribes from its last seq", async () => {
  const { io, sockets } = fakeIo();
  const seen = [];
  const watcher = watchJob(JOB, {
    socketUrl: ["http://a.test", "http://b.test"],
    token: "t",
    io,
    reconnectFirstMs: 1,
    onEvent: (e) => seen.push(e.seq),
  });
  sockets[0].open();
  sockets[0].subscribes()[0].callback(null, { ok: true, job: jobView(2), missed: [event(1), event(2)] });
  sockets[0].fire("disconnect_reason", { reason: "shutdown", reconnect: true });
  sockets[0].connected = false;
  sockets[0].fire("disconnect", "io server disconnect");
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(sockets[1].url, "http://b.test");
  sockets[1].open();
  const resub = sockets[1].subscribes()[0];
  assert.deepEqual(resub.data, { job_id: JOB, last_seq: 2 });
  resub.callback(null, {
    ok: true,
    job: jobView(3, "completed"),
    missed: [event(3, { type: "completed", status: "completed" })],
  });
  await watcher.done;
  assert.deepEqual(seen, [1, 2, 3]);
});

test("without a notifier it polls the API's event history with a growing interval", async () => {
  const { io, sockets } = fakeIo();
  const calls = [];
  const pages = [[event(1), event(2)], [], [event(3, { type: "completed", status: "completed" })]];
  const fetch = async (url) => {
    calls.push({ url, at: Date.now() });
    if (url.endsWith(`/v1/jobs/${JOB}`)) return Response.json(jobView(3, "completed"));
    return Response.json((pages.shift() ?? []).map(({ job_id, ...rest }) => rest));
  };
  const modes = [];
  const watcher = watchJob(JOB, {
    baseUrl: "http://api.test/",
    socketUrl: "http://closed.test",
    token: "t",
    io,
    fetch,
    fallbackAfterMs: 10,
    pollFirstMs: 100,
    reconnectFirstMs: 10_000,
    onMode: (m) => modes.push(m),
  });
  sockets[0].fire("connect_error", new Error("websocket error"));
  const job = await watcher.done;
  assert.equal(job.status, "completed");
  assert.deepEqual(modes, ["polling", "done"]);
  const polls = calls.filter((c) => c.url.includes("/events"));
  assert.deepEqual(
    polls.map((c) => new URL(c.url).searchParams.get("after_seq")),
    ["0", "2", "2"],
  );
  // 100 ms, then 150 ms (x 1.5) between polls
  const [first, second] = [polls[1].at - polls[0].at, polls[2].at - polls[1].at];
  assert.ok(first >= 95 && second >= 145, `${first} ms, ${second} ms`);
});

test("a refused token stops the watcher with the reason", async () => {
  const { io, sockets } = fakeIo();
  let reported = null;
  const watcher = watchJob(JOB, {
    socketUrl: "http://notifier.test",
    token: "wrong",
    io,
    onError: (err) => {
      reported = err;
    },
  });
  sockets[0].fire("connect_error", Object.assign(new Error("authentication failed"), { data: { code: 4401 } }));
  await assert.rejects(watcher.done, /authentication failed/);
  assert.equal(reported.message, "authentication failed");
  assert.equal(watcher.mode, "stopped");
});
