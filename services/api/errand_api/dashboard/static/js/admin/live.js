// The admin's Socket.IO connection: an admin key joins the "admin" room, which gets
// every job_event. Views listen here; the header shows the connection state.

import { io } from "socket.io-client";

import { setText } from "../lib/dom.js";

const LABELS = {
  connecting: "Connecting…",
  live: "Live",
  offline: "Reconnecting…",
};

export class Live {
  /**
   * @param {string} url notifier URL ("" for this origin)
   * @param {string} token the admin key
   * @param {{onRefused: () => void}} handlers
   */
  constructor(url, token, { onRefused }) {
    this.listeners = new Map();
    this.stateEl = document.getElementById("live-state");
    this.setState("connecting");
    this.socket = io(url || undefined, { auth: { token }, path: "/socket.io" });
    this.socket.on("connect", () => {
      this.setState("live");
      this.dispatch("connect", null);
    });
    this.socket.on("disconnect", () => this.setState("offline"));
    this.socket.on("connect_error", (err) => {
      this.setState("offline");
      if (String(err && err.message).includes("authentication failed")) onRefused();
    });
    this.socket.on("job_event", (event) => this.dispatch("job_event", event));
    // Anything else the notifier sends the admin room (queue stats ticks and the like).
    this.socket.onAny((name, payload) => {
      if (name !== "job_event") this.dispatch(name, payload);
    });
  }

  setState(state) {
    this.stateEl.dataset.state = state;
    setText(this.stateEl, LABELS[state]);
  }

  /** Listen to an event; returns a function that stops listening. */
  on(name, fn) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(fn);
    return () => this.listeners.get(name).delete(fn);
  }

  dispatch(name, payload) {
    for (const fn of this.listeners.get(name) || []) fn(payload);
  }

  /** Subscribe to one job (snapshot + missed events in the ack). */
  subscribe(jobId, lastSeq) {
    return new Promise((resolve) => {
      if (!this.socket.connected) {
        resolve({ ok: false, error: "offline" });
        return;
      }
      this.socket.timeout(10000).emit("subscribe", { job_id: jobId, last_seq: lastSeq ?? null }, (err, ack) => {
        resolve(err ? { ok: false, error: "timeout" } : ack);
      });
    });
  }

  unsubscribe(jobId) {
    if (this.socket.connected) this.socket.emit("unsubscribe", { job_id: jobId });
  }

  get connected() {
    return this.socket.connected;
  }

  close() {
    this.socket.close();
  }
}
