// The rules of following a job, shared by the watcher and its tests: which statuses
// are final, when an event follows on from the last one, and the retry schedule.

/** Job statuses after which a job is over (until someone retries it). */
export const FINAL_STATUSES = Object.freeze(["completed", "failed", "dead", "cancelled"]);

/** Defaults of every option that has one. */
export const DEFAULTS = Object.freeze({
  transports: ["websocket"],
  pollFirstMs: 1000,
  pollFactor: 1.5,
  pollCapMs: 30000,
  fallbackAfterMs: 3000,
  reconnectFirstMs: 250,
  reconnectFactor: 1.5,
  reconnectCapMs: 5000,
  ackTimeoutMs: 10000,
});

/**
 * Delay before the nth retry (n = 0, 1, ...): first × factorⁿ, capped.
 * @param {number} n
 * @param {number} firstMs
 * @param {number} factor
 * @param {number} capMs
 * @returns {number}
 */
export function backoffDelay(n, firstMs, factor, capMs) {
  return Math.min(capMs, firstMs * factor ** n);
}

/**
 * Whether `event` follows `lastSeq`: the next seq, or one whose `prev_seq` says the
 * notifier coalesced progress ticks before it (not a gap).
 * @param {number} lastSeq
 * @param {{seq: number, prev_seq?: number}} event
 * @returns {boolean}
 */
export function followsOn(lastSeq, event) {
  if (event.seq === lastSeq + 1) return true;
  return Number.isInteger(event.prev_seq) && event.prev_seq <= lastSeq && event.seq > lastSeq;
}
