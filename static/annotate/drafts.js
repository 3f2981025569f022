// Drafts: what the rater has given on a lease so far, kept in localStorage under the lease's id so
// that a reload, a crash or an undone skip loses nothing. A draft is
// {answers, criterion, ms}: the answers as submitted, the highlighted criterion, time on task.

const key = (leaseId) => `refinery:draft:${leaseId}`;

export function saveDraft(leaseId, draft) {
  try {
    localStorage.setItem(key(leaseId), JSON.stringify(draft));
  } catch (_) {
    /* storage full or disabled: the page still keeps the text while it stays open */
  }
}

export function loadDraft(leaseId) {
  try {
    return JSON.parse(localStorage.getItem(key(leaseId)) || "null");
  } catch (_) {
    return null;
  }
}

export function dropDraft(leaseId) {
  try {
    localStorage.removeItem(key(leaseId));
  } catch (_) {
    /* ignore */
  }
}
