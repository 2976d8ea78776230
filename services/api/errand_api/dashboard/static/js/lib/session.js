// The signed-in API key lives in this tab's sessionStorage: it survives reloads and
// navigation between /admin and /demo, and is gone when the tab closes.

const KEY = "errand.apiKey";

export function getKey() {
  try {
    return window.sessionStorage.getItem(KEY);
  } catch {
    return null;
  }
}

export function setKey(value) {
  window.sessionStorage.setItem(KEY, value);
}

export function clearKey() {
  window.sessionStorage.removeItem(KEY);
}

/** A preference kept across tabs (not a secret): localStorage. */
export function getPref(name, fallback = null) {
  try {
    return window.localStorage.getItem(`errand.${name}`) ?? fallback;
  } catch {
    return fallback;
  }
}

export function setPref(name, value) {
  if (value) window.localStorage.setItem(`errand.${name}`, value);
  else window.localStorage.removeItem(`errand.${name}`);
}
