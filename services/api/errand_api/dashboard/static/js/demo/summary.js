// The demo's toasts: one Socket.IO connection that joins the user's room and listens to
// `jobs_summary`. The notifier batches completions ("3 jobs finished", one toast per
// window of ERRAND_SUMMARY_WINDOW_S, 2 s by default) and sends each failure and
// cancellation at once, so a burst of finished jobs is one toast, not a pile of them.

import { io } from "socket.io-client";

/**
 * Follow the user's `jobs_summary` events.
 * @param {string} url the notifier's URL ("" or null: this origin)
 * @param {string} token the API key
 * @param {object} handlers
 * @param {(summary: object) => void} handlers.onSummary each `jobs_summary`
 * @param {(live: boolean) => void} [handlers.onState] the connection went up or down
 * @returns {{live: boolean, close: () => void}} `live` while the connection is up
 */
export function followSummaries(url, token, { onSummary, onState = () => {} }) {
  const socket = io(url || undefined, { auth: { token }, path: "/socket.io", transports: ["websocket"] });
  socket.on("connect", () => onState(true));
  socket.on("disconnect", () => onState(false));
  socket.on("jobs_summary", (summary) => onSummary(summary));
  // A refused key: stop retrying (the page's API calls report it).
  socket.on("connect_error", (err) => {
    if (String(err && err.message).includes("authentication failed")) socket.close();
  });
  return {
    get live() {
      return socket.connected;
    },
    close: () => socket.close(),
  };
}
