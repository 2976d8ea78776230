// The HTTP API, with the signed-in key. Errors are RFC 9457 problems: ApiError
// carries the status and the problem's title and detail for the person to read.

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.problem = problem;
  }
}

/** A read the API has not answered in this long fails (and can be tried again). */
const READ_TIMEOUT_MS = 30_000;

const TIMEOUT = { title: "Timeout", detail: "The API did not answer in time." };

/**
 * Build an API client.
 * @param {() => string | null} getToken the current key
 * @param {() => void} onUnauthorized called on a 401 (the key was revoked)
 */
export function createApi(getToken, onUnauthorized = () => {}) {
  async function request(method, path, { query, body, timeoutMs = READ_TIMEOUT_MS } = {}) {
    const url = new URL(path, window.location.origin);
    for (const [name, value] of Object.entries(query || {})) {
      if (value === null || value === undefined || value === "") continue;
      for (const item of Array.isArray(value) ? value : [value]) {
        url.searchParams.append(name, String(item));
      }
    }
    const headers = { Accept: "application/json" };
    const token = getToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    // Only reads are given up on: a write given up on here could still be done by the
    // API. (An AbortController, not AbortSignal.timeout: older browsers lack it.)
    const abort = method === "GET" ? new AbortController() : null;
    const timer = abort && setTimeout(() => abort.abort(), timeoutMs);
    try {
      let response;
      try {
        response = await fetch(url, {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
          cache: "no-store",
          signal: abort ? abort.signal : undefined,
        });
      } catch (err) {
        if (abort && abort.signal.aborted) throw new ApiError(0, TIMEOUT);
        throw new ApiError(0, { title: "Network error", detail: "The API could not be reached." });
      }
      if (response.status === 401) onUnauthorized();
      if (!response.ok) {
        const problem = await response.json().catch(() => ({}));
        throw new ApiError(response.status, problem);
      }
      if (response.status === 204) return null;
      try {
        return await response.json();
      } catch (err) {
        // The body cut short: by the timeout, or by the network
        if (abort && abort.signal.aborted) throw new ApiError(0, TIMEOUT);
        throw err;
      }
    } finally {
      clearTimeout(timer);
    }
  }
  return {
    get: (path, query, { timeoutMs } = {}) => request("GET", path, { query, timeoutMs }),
    post: (path, body = {}) => request("POST", path, { body }),
    delete: (path) => request("DELETE", path),
  };
}
