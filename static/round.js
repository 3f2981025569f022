// The round page: polls the round's status every 2 s and moves the step bars, without a reload.
// Text from the server goes in with textContent only. When the round ends, the page reloads once
// so the server renders what the round produced (adapter, refinements, new tasks, the error).

const POLL_MS = 2000;
const live = document.getElementById("round-live");

function showStage(item, stage) {
  item.dataset.status = stage.status;
  item.querySelector("[data-role=status]").textContent = stage.status;
  item.querySelector("[data-role=detail]").textContent = stage.detail;
  const bar = item.querySelector("progress");
  if (stage.total) {
    bar.max = stage.total;
    bar.value = stage.done ?? 0;
  } else if (stage.status === "running") {
    bar.removeAttribute("value"); // indeterminate: working, nothing countable yet
  } else {
    bar.max = 1;
    bar.value = stage.status === "done" ? 1 : 0;
  }
}

function show(status) {
  const badge = live.querySelector(".round-title [data-role=state]");
  badge.textContent = status.state_display;
  badge.className = `state state-${status.state}`;
  for (const stage of status.stages) {
    const item = live.querySelector(`[data-stage="${CSS.escape(stage.state)}"]`);
    if (item) showStage(item, stage);
  }
  const error = live.querySelector("[data-role=error]");
  error.hidden = !status.error;
  live.querySelector("[data-role=error-text]").textContent = status.error;
  if (status.error && status.state !== "failed") {
    live.querySelector("[data-role=error-title]").textContent = "Last try failed, retrying";
  }
}

async function poll() {
  let status = null;
  try {
    const response = await fetch(live.dataset.statusUrl, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      cache: "no-store",
    });
    if (response.ok) status = await response.json();
  } catch (_) {
    // A dropped request: try again at the next tick.
  }
  if (status) {
    if (status.state !== live.dataset.state && status.is_terminal) {
      window.location.reload();
      return;
    }
    live.dataset.state = status.state;
    show(status);
  }
  window.setTimeout(poll, POLL_MS);
}

if (live && live.dataset.statusUrl) window.setTimeout(poll, POLL_MS);
