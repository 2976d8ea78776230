// Against a running Errand: set ERRAND_API_URL, ERRAND_NOTIFIER_URL and ERRAND_API_KEY
// (and optionally ERRAND_NOTIFIER_URL_2, a second replica, and ERRAND_CLOSED_URL, a
// URL where nothing listens). tests/integration/test_realtime_js_client.py sets them.
import assert from "node:assert/strict";
import { test } from "node:test";

import { watchJob } from "../src/index.js";

const env = process.env;
const API = env.ERRAND_API_URL;
const NOTIFIER = env.ERRAND_NOTIFIER_URL;
const KEY = env.ERRAND_API_KEY;
const CLOSED = env.ERRAND_CLOSED_URL ?? "http://127.0.0.1:9";
const live = {
  skip: API && NOTIFIER && KEY ? false : "needs ERRAND_API_URL, ERRAND_NOTIFIER_URL, ERRAND_API_KEY",
  timeout: 60_000,
};

async function submit(steps) {
  const resp = await fetch(`${API}/v1/jobs`, {
    method: "POST",
    headers: { Authorization: `Bearer ${KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ type: "demo.pipeline", payload: { steps } }),
  });
  assert.equal(resp.status, 202, await resp.clone().text());
  return resp.json();
}

const steps = (n, durationS = 0.4, ticks = 2) =>
  Array.from({ length: n }, (_, i) => ({ name: `s${i + 1}`, duration_s: durationS, ticks }));

function follow(jobId, options) {
  const seqs = [];
  const modes = [];
  const watcher = watchJob(jobId, {
    baseUrl: API,
    socketUrl: NOTIFIER,
    token: KEY,
    onEvent: (e) => seqs.push(e.seq),
    onMode: (m) => modes.push(m),
    ...options,
  });
  return { watcher, seqs, modes };
}

const upTo = (n) => Array.from({ length: n }, (_, i) => i + 1);

test("live: every event once, in seq order, then the final job", live, async () => {
  const job = await submit(steps(3));
  let doneCalls = 0;
  const { watcher, seqs, modes } = follow(job.id, { onDone: () => doneCalls++ });
  const final = await watcher.done;
  assert.equal(final.status, "completed");
  assert.deepEqual(final.result.completed_steps, ["s1", "s2", "s3"]);
  assert.deepEqual(seqs, upTo(final.seq));
  assert.equal(doneCalls, 1);
  assert.deepEqual(modes, ["live", "done"]);
});

test("two clients on two replicas both get every event", { ...live, skip: live.skip || (!env.ERRAND_NOTIFIER_URL_2 && "needs ERRAND_NOTIFIER_URL_2") }, async () => {
  const job = await submit(steps(3));
  const a = follow(job.id);
  const b = follow(job.id, { socketUrl: env.ERRAND_NOTIFIER_URL_2 });
  const [finalA, finalB] = await Promise.all([a.watcher.done, b.watcher.done]);
  assert.equal(finalA.seq, finalB.seq);
  assert.deepEqual(a.seqs, upTo(finalA.seq));
  assert.deepEqual(b.seqs, upTo(finalB.seq));
});

test("a notifier URL that does not answer is skipped for the next one", live, async () => {
  const job = await submit(steps(2));
  const { watcher, seqs, modes } = follow(job.id, { socketUrl: [CLOSED, NOTIFIER] });
  const final = await watcher.done;
  assert.equal(final.status, "completed");
  assert.deepEqual(seqs, upTo(final.seq));
  assert.ok(modes.includes("live"), modes.join());
  assert.equal(watcher.url, NOTIFIER);
});

test("with no notifier at all it polls the API until the job ends", live, async () => {
  const job = await submit(steps(2, 0.5, 2));
  const { watcher, seqs, modes } = follow(job.id, { socketUrl: CLOSED, fallbackAfterMs: 200 });
  const final = await watcher.done;
  assert.equal(final.status, "completed");
  assert.deepEqual(seqs, upTo(final.seq));
  assert.deepEqual(modes, ["polling", "done"]);
});

test("a job already over is reported at once from the subscribe ack", live, async () => {
  const job = await submit(steps(1, 0, 0));
  const first = follow(job.id);
  const ended = await first.watcher.done;
  const again = follow(job.id);
  const final = await again.watcher.done;
  assert.equal(final.seq, ended.seq);
  assert.deepEqual(again.seqs, upTo(final.seq));
});

test("a wrong token is refused and reported", live, async () => {
  const job = await submit(steps(1, 0, 0));
  const { watcher } = follow(job.id, { token: "erk_000000000000_wrong" });
  await assert.rejects(watcher.done, /authentication failed/);
  assert.equal(watcher.mode, "stopped");
});
