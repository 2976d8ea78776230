// Errand job watcher for browsers and Node: live over Socket.IO, HTTP polling as a fallback.
//
// A plain ES module with one dependency, "socket.io-client". It uses only what browsers
// and Node 20 both have (fetch, setTimeout, URL), so a page can load it through an
// import map that points "socket.io-client" at an ESM build.

import { io as defaultIo } from "socket.io-client";

import { DEFAULTS, FINAL_STATUSES, backoffDelay, followsOn } from "./rules.js";

export { DEFAULTS, FINAL_STATUSES, backoffDelay, followsOn };

const isFinal = (status) => FINAL_STATUSES.includes(status);
const trimSlash = (url) => String(url).replace(/\/+$/, "");
const noop = () => {};

/** Call a user callback; an exception in it must not break the watcher. */
function safely(fn, ...args) {
  try {
    fn(...args);
  } catch (err) {
    queueMicrotask(() => {
      throw err;
    });
  }
}

/**
 * Follow one job until it ends.
 *
 * Events reach `onEvent` once each, in seq order: repeats are dropped and a gap makes
 * the watcher subscribe again with the last seq it has, so the ack carries what was
 * missed. When the notifier cannot be reached (or drops us) for `fallbackAfterMs`, the
 * watcher polls the API (`GET /v1/jobs/{id}/events?after_seq=`) every 1 s × 1.5ⁿ,
 * capped at 30 s, while it keeps trying the notifier URLs in turn; live updates take
 * over again as soon as a connection is back.
 *
 * @param {string} jobId
 * @param {object} options
 * @param {string} options.token API key or JWT.
 * @param {string} [options.baseUrl] The API's URL (polling, and the final job view).
 * @param {string|string[]} [options.socketUrl] Notifier URL(s); default `baseUrl`.
 * @param {(event: object) => void} [options.onEvent] Each job event, in seq order.
 * @param {(job: object) => void} [options.onDone] The job, once it is final.
 * @param {(job: object) => void} [options.onSnapshot] The job view from a subscribe ack.
 * @param {(mode: string) => void} [options.onMode] "connecting", "live", "polling", "done", "stopped".
 * @param {(error: Error) => void} [options.onError] A refused token or another fatal error.
 * @returns {JobWatch}
 */
export function watchJob(jobId, options = {}) {
  return new JobWatch(jobId, options);
}

/** One job followed live; made by {@link watchJob}. */
export class JobWatch {
  #jobId;
  #opts;
  #apiUrl;
  #socketUrls;
  #io;
  #fetch;
  #job = null;
  #lastSeq = 0;
  #mode = "connecting";
  #urlIndex = 0;
  #acked = false;
  #buffer = [];
  #subscribing = false;
  #resubscribe = false;
  #finished = false;
  #socket = null;
  #reconnects = 0;
  #pollCount = 0;
  #timers = new Set();
  #fallbackTimer = null;
  #pollTimer = null;
  #resolve;
  #reject;

  constructor(jobId, options) {
    this.#jobId = String(jobId);
    this.#opts = { onEvent: noop, onDone: noop, onSnapshot: noop, onMode: noop, onError: noop };
    Object.assign(this.#opts, DEFAULTS, options);
    this.#io = options.io ?? defaultIo;
    this.#fetch = options.fetch ?? globalThis.fetch?.bind(globalThis);
    this.#apiUrl = options.baseUrl ? trimSlash(options.baseUrl) : null;
    this.#socketUrls = [].concat(options.socketUrl ?? this.#apiUrl ?? []).map(trimSlash);
    if (!options.token) throw new TypeError("watchJob: options.token is required");
    if (!this.#socketUrls.length && !this.#apiUrl) {
      throw new TypeError("watchJob: give baseUrl or socketUrl");
    }
    /** Resolves with the final job (or the last known state after `stop()`). */
    this.done = new Promise((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.done.catch(noop); // a failure is reported through onError too
    if (this.#socketUrls.length) {
      this.#armFallback();
      this.#connect();
    } else {
      this.#startPolling();
    }
  }

  /** The latest job view: the subscribe ack's snapshot, updated by each event. */
  get job() {
    return this.#job;
  }

  /** The last seq applied. */
  get lastSeq() {
    return this.#lastSeq;
  }

  /** "connecting", "live", "polling", "done" or "stopped". */
  get mode() {
    return this.#mode;
  }

  /** The notifier URL in use or tried next. */
  get url() {
    return this.#socketUrls[this.#urlIndex % this.#socketUrls.length] ?? null;
  }

  /** Stop watching: unsubscribe, close the connection, cancel timers. */
  stop() {
    if (this.#finished) return;
    this.#finished = true;
    this.#teardown();
    this.#setMode("stopped");
    this.#resolve(this.#job);
  }

  // -- events -----------------------------------------------------------------------

  #apply(event) {
    if (event.seq <= this.#lastSeq) return true;
    if (!followsOn(this.#lastSeq, event)) return false;
    this.#lastSeq = event.seq;
    this.#job = {
      ...(this.#job ?? { id: this.#jobId }),
      status: event.status,
      progress: event.progress,
      step: event.step ?? null,
      seq: event.seq,
    };
    safely(this.#opts.onEvent, { job_id: this.#jobId, ...event });
    if (isFinal(event.status)) this.#finish();
    return true;
  }

  #onLiveEvent(event) {
    if (this.#finished || String(event.job_id) !== this.#jobId) return;
    if (!this.#acked) {
      this.#buffer.push(event);
    } else if (!this.#apply(event)) {
      this.#subscribe();
    }
  }

  #onAck(ack) {
    this.#subscribing = false;
    if (this.#finished) return;
    if (!ack?.ok) {
      this.#fail(new Error(`subscribe refused: ${ack?.error ?? "no answer"}`));
      return;
    }
    for (const event of ack.missed ?? []) this.#apply(event);
    if (!this.#finished && ack.job && ack.job.seq >= this.#lastSeq) {
      this.#job = ack.job;
      this.#lastSeq = ack.job.seq;
      safely(this.#opts.onSnapshot, ack.job);
    }
    this.#acked = true;
    for (const event of this.#buffer.splice(0)) {
      if (!this.#finished && !this.#apply(event)) this.#resubscribe = true;
    }
    if (!this.#finished && isFinal(this.#job?.status)) this.#finish();
    if (!this.#finished && this.#resubscribe) this.#subscribe();
  }

  #subscribe() {
    const socket = this.#socket;
    if (!socket?.connected || this.#finished) return;
    if (this.#subscribing) {
      this.#resubscribe = true;
      return;
    }
    this.#subscribing = true;
    this.#resubscribe = false;
    this.#acked = false;
    const body = { job_id: this.#jobId, last_seq: this.#lastSeq };
    socket.timeout(this.#opts.ackTimeoutMs).emit("subscribe", body, (err, ack) => {
      if (socket !== this.#socket) return;
      if (err) {
        this.#subscribing = false;
        this.#subscribe();
        return;
      }
      this.#onAck(ack);
    });
  }

  // -- the socket -------------------------------------------------------------------

  #connect() {
    if (this.#finished) return;
    const socket = this.#io(this.url, {
      auth: { token: this.#opts.token },
      transports: this.#opts.transports,
      reconnection: false,
      forceNew: true,
      timeout: 5000,
    });
    this.#socket = socket;
    let serverReason = null;
    socket.on("connect", () => {
      this.#reconnects = 0;
      this.#stopPolling();
      this.#setMode("live");
      this.#subscribe();
    });
    socket.on("job_event", (event) => this.#onLiveEvent(event));
    socket.on("disconnect_reason", (data) => {
      serverReason = data ?? {};
    });
    socket.on("connect_error", (err) => {
      if (socket !== this.#socket) return;
      if (err?.message === "authentication failed") {
        this.#fail(Object.assign(new Error("authentication failed"), { data: err.data }));
      } else {
        this.#retrySocket();
      }
    });
    socket.on("disconnect", (reason) => {
      if (socket !== this.#socket || this.#finished || reason === "io client disconnect") return;
      if (serverReason?.reconnect === false) {
        this.#fail(new Error(`disconnected by the server: ${serverReason.reason}`));
      } else {
        this.#retrySocket();
      }
    });
  }

  #retrySocket() {
    this.#closeSocket();
    if (this.#finished) return;
    if (this.#mode === "live") this.#setMode("connecting");
    this.#urlIndex += 1;
    this.#armFallback();
    const { reconnectFirstMs, reconnectFactor, reconnectCapMs } = this.#opts;
    const delay = backoffDelay(this.#reconnects++, reconnectFirstMs, reconnectFactor, reconnectCapMs);
    this.#later(delay, () => this.#connect());
  }

  #closeSocket() {
    const socket = this.#socket;
    this.#socket = null;
    this.#acked = false;
    this.#subscribing = false;
    if (!socket) return;
    if (socket.connected && this.#finished) socket.emit("unsubscribe", { job_id: this.#jobId });
    socket.removeAllListeners();
    socket.close();
  }

  // -- polling ----------------------------------------------------------------------

  #armFallback() {
    if (!this.#apiUrl || this.#fallbackTimer !== null || this.#pollTimer !== null) return;
    if (this.#finished) return;
    this.#fallbackTimer = this.#later(this.#opts.fallbackAfterMs, () => {
      this.#fallbackTimer = null;
      if (!this.#socket?.connected && !this.#finished) this.#startPolling();
    });
  }

  #startPolling() {
    this.#setMode("polling");
    this.#pollCount = 0;
    this.#pollTimer = this.#later(0, () => this.#pollOnce());
  }

  #stopPolling() {
    for (const id of [this.#fallbackTimer, this.#pollTimer]) {
      if (id !== null) {
        clearTimeout(id);
        this.#timers.delete(id);
      }
    }
    this.#fallbackTimer = null;
    this.#pollTimer = null;
  }

  async #pollOnce() {
    this.#pollTimer = null;
    if (this.#finished || this.#mode !== "polling") return;
    try {
      const url = `${this.#apiUrl}/v1/jobs/${this.#jobId}/events?after_seq=${this.#lastSeq}`;
      const resp = await this.#fetch(url, { headers: this.#authHeaders() });
      if (resp.status === 401 || resp.status === 404) {
        this.#fail(new Error(`polling ${this.#jobId}: HTTP ${resp.status}`));
        return;
      }
      if (resp.ok) {
        for (const event of await resp.json()) this.#apply({ job_id: this.#jobId, ...event });
      }
    } catch {
      // the API is unreachable too: try again later
    }
    if (this.#finished || this.#mode !== "polling") return;
    const { pollFirstMs, pollFactor, pollCapMs } = this.#opts;
    const delay = backoffDelay(this.#pollCount++, pollFirstMs, pollFactor, pollCapMs);
    this.#pollTimer = this.#later(delay, () => this.#pollOnce());
  }

  // -- the end ----------------------------------------------------------------------

  async #finish() {
    if (this.#finished) return;
    this.#finished = true;
    this.#teardown();
    this.#setMode("done");
    if (this.#apiUrl) {
      try {
        const url = `${this.#apiUrl}/v1/jobs/${this.#jobId}`;
        const resp = await this.#fetch(url, { headers: this.#authHeaders() });
        if (resp.ok) this.#job = await resp.json();
      } catch {
        // keep what the events said
      }
    }
    safely(this.#opts.onDone, this.#job);
    this.#resolve(this.#job);
  }

  #fail(error) {
    if (this.#finished) return;
    this.#finished = true;
    this.#teardown();
    this.#setMode("stopped");
    safely(this.#opts.onError, error);
    this.#reject(error);
  }

  #teardown() {
    this.#stopPolling();
    for (const id of this.#timers) clearTimeout(id);
    this.#timers.clear();
    this.#closeSocket();
  }

  // -- helpers ----------------------------------------------------------------------

  #later(ms, fn) {
    const id = setTimeout(() => {
      this.#timers.delete(id);
      fn();
    }, ms);
    this.#timers.add(id);
    return id;
  }

  #setMode(mode) {
    if (this.#mode !== mode) {
      this.#mode = mode;
      safely(this.#opts.onMode, mode);
    }
  }

  #authHeaders() {
    return { Authorization: `Bearer ${this.#opts.token}` };
  }
}
