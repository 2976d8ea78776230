// The last hour of jobs, for the overview's charts. The API has no history endpoint,
// so the history is rebuilt from the job listing (jobs created in the last hour, plus
// older ones still active) and then kept current from live job_events.
//
// Per one-minute bucket:
//   depth       jobs waiting (created, not started, not finished) at the bucket's end
//   running     jobs running at the bucket's end
//   throughput  jobs completed during the bucket
//   failure     failed + dead, as a share of jobs that finished during the bucket

export const BUCKETS = 60;
export const BUCKET_MS = 60_000;
/** Most jobs read when rebuilding the history (10 pages of 500). */
const MAX_JOBS = 5000;

export class History {
  constructor() {
    this.jobs = new Map();
    this.truncated = false;
  }

  /** Read the last hour from the API. */
  async load(api) {
    const since = new Date(Date.now() - BUCKETS * BUCKET_MS).toISOString();
    let cursor = null;
    do {
      const page = await api.get("/v1/jobs", { created_after: since, limit: 500, cursor });
      for (const job of page.data) this.remember(job);
      cursor = page.next_cursor;
    } while (cursor && this.jobs.size < MAX_JOBS);
    this.truncated = Boolean(cursor);
    const older = await api.get("/v1/jobs", {
      status: ["queued", "running", "retrying"],
      created_before: since,
      limit: 500,
    });
    for (const job of older.data) this.remember(job);
  }

  remember(job) {
    this.jobs.set(job.id, {
      created: Date.parse(job.created_at),
      started: job.started_at ? Date.parse(job.started_at) : null,
      finished: job.finished_at ? Date.parse(job.finished_at) : null,
      status: job.status,
    });
  }

  /** Follow one live event. */
  apply(event) {
    const at = Date.parse(event.at);
    let job = this.jobs.get(event.job_id);
    if (!job) {
      // A job from before the window: only what happens from now on is known.
      job = { created: event.type === "queued" ? at : null, started: null, finished: null, status: event.status };
      this.jobs.set(event.job_id, job);
    }
    if (event.type === "queued" && job.finished !== null) {
      // A retry or requeue: the job waits again.
      job.started = null;
      job.finished = null;
    }
    if (event.type === "started" && job.started === null) job.started = at;
    if (["completed", "failed", "dead", "cancelled"].includes(event.type)) job.finished = at;
    job.status = event.status;
  }

  /** The four series, oldest bucket first, ending at `now`. */
  series(now = Date.now()) {
    const start = now - BUCKETS * BUCKET_MS;
    const depth = new Array(BUCKETS).fill(0);
    const running = new Array(BUCKETS).fill(0);
    const completed = new Array(BUCKETS).fill(0);
    const failed = new Array(BUCKETS).fill(0);
    for (const [id, job] of this.jobs) {
      if (job.finished !== null && job.finished < start) {
        this.jobs.delete(id);
        continue;
      }
      if (job.finished !== null) {
        const i = Math.min(BUCKETS - 1, Math.floor((job.finished - start) / BUCKET_MS));
        if (job.status === "completed") completed[i] += 1;
        else if (job.status === "failed" || job.status === "dead") failed[i] += 1;
      }
      for (let i = 0; i < BUCKETS; i += 1) {
        const t = start + (i + 1) * BUCKET_MS;
        if (job.finished !== null && job.finished <= t) continue;
        if (job.started !== null && job.started <= t) running[i] += 1;
        else if (job.created !== null && job.created <= t && job.started === null) depth[i] += 1;
        else if (job.created !== null && job.created <= t && job.started > t) depth[i] += 1;
      }
    }
    const failure = completed.map((ok, i) => {
      const total = ok + failed[i];
      return total ? (100 * failed[i]) / total : null;
    });
    return { depth, running, throughput: completed, failure };
  }
}
