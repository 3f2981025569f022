// The rating page's calls to Refinery's JSON API: same-origin, with Django's CSRF token.
// Answers {status, data}; a network failure rejects, as fetch does.

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

export async function api(method, url, body) {
  const response = await fetch(url, {
    method,
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken(), Accept: "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  if (response.status !== 204) {
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
  }
  return { status: response.status, data };
}

// A POST that outlives the page (sent while it unloads); its answer is never read.
export function postKeepalive(url) {
  fetch(url, {
    method: "POST",
    credentials: "same-origin",
    keepalive: true,
    headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" },
  });
}
