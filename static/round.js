// The round page: polls the loop's API (GET /api/v1/rounds/{id}/) every 2 s and redraws the
// steps' bars without a reload. The step rules are those of feedback_loop/reports.py
// (round_stages), which draws the page first: change both together.
// Text goes in with textContent only. When the round ends, the page reloads once so the server
// renders what the round produced (adapter, refinements, new tasks, the error and Retry).

const POLL_MS = 2000;
const STEPS = ["pending", "refining", "selecting", "training", "evaluating", "generating"];
const live = document.getElementById("round-live");
const labels = JSON.parse(document.getElementById("round-state-labels")?.textContent || "{}");

const isNumber = (value) => typeof value === "number" && Number.isFinite(value);
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function currentStep(round) {
  const progress = round.progress || {};
  if (STEPS.includes(round.state)) return round.state;
  if (round.state === "failed") return round.failed_state || progress.stage || null;
  if (round.state === "cancelled") return progress.stage || null;
  return null;
}

function describe(stage, round, live) {
  const finished = stage.status === "done";
  const done = isNumber(live.done) ? live.done : null;
  const total = isNumber(live.total) ? live.total : null;
  const n = (value) => Math.trunc(value || 0);
  const set = (d, t, detail) => Object.assign(stage, { done: d, total: t, detail });
  switch (stage.state) {
    case "pending":
      if (finished) set(1, 1, plural(round.feedback_count, "feedback judgment"));
      else if (stage.status === "running") stage.detail = "gathering new feedback";
      break;
    case "refining":
      if (finished) set(1, 1, `${round.refinement_count} refinements of ${round.feedback_count} feedback`);
      else if (total) set(done || 0, total, `${n(done)} of ${n(total)} feedback items refined`);
      break;
    case "selecting":
      if (finished) {
        const most = Math.max(round.feedback_count, round.selected_count, 1);
        set(round.selected_count, most, `${round.selected_count} selected for ${round.feedback_count} feedback`);
      } else if (total) set(done || 0, total, `choosing among the refinements of ${n(total)} feedback items`);
      break;
    case "training": {
      const step = isNumber(live.step) ? live.step : null;
      const steps = isNumber(live.total_steps) ? live.total_steps : null;
      if (finished) set(1, 1, `${round.train_example_count} training examples`);
      else if (steps) {
        let detail = `step ${n(step)} of ${n(steps)}`;
        if (isNumber(live.loss)) detail += ` · loss ${live.loss.toFixed(4)}`;
        set(step || 0, steps, detail);
      } else if (Object.keys(live).length) stage.detail = "loading the model";
      break;
    }
    case "evaluating":
      if (finished) set(1, 1, { true: "promoted", false: "not promoted" }[round.promoted] || "evaluated");
      else if (total) set(done || 0, total, `${n(total)} held-out examples`);
      break;
    case "generating":
      if (finished) set(1, 1, plural(round.new_task_count, "new task"));
      else if (total) {
        const role = typeof live.role === "string" ? ` (${live.role} model)` : "";
        set(done || 0, total, `writing ${n(total)} outputs${role}`);
      }
      if (finished && round.state === "done" && round.promoted === false) {
        set(null, null, "skipped: the adapter was not promoted");
        stage.status = "skipped";
      }
      break;
  }
}

function stages(round) {
  const at = currentStep(round);
  const reached = STEPS.includes(at) ? STEPS.indexOf(at) : round.state === "done" ? STEPS.length : -1;
  const progress = round.progress || {};
  const current = progress.stage === at ? progress : {};
  return STEPS.map((state, index) => {
    let status = "todo";
    if (index < reached) status = "done";
    else if (index === reached) status = { failed: "failed", cancelled: "stopped" }[round.state] || "running";
    const stage = { state, status, done: null, total: null, detail: "" };
    describe(stage, round, index === reached ? current : {});
    return stage;
  });
}

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
    bar.value = 0;
  }
}

function show(round) {
  const badge = live.querySelector(".round-title [data-role=state]");
  badge.textContent = labels[round.state] || round.state;
  badge.className = `state state-${round.state}`;
  for (const stage of stages(round)) {
    const item = live.querySelector(`[data-stage="${stage.state}"]`);
    if (item) showStage(item, stage);
  }
  // A step that raised and is being tried again keeps its error on the round until it passes.
  live.querySelector("[data-role=error]").hidden = !round.error;
  live.querySelector("[data-role=error-text]").textContent = round.error || "";
}

async function poll() {
  if (document.hidden) {
    // Nobody is looking: ask again later rather than load the server for a background tab.
    window.setTimeout(poll, POLL_MS);
    return;
  }
  let round = null;
  try {
    const response = await fetch(live.dataset.apiUrl, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      cache: "no-store",
    });
    if (response.ok) round = await response.json();
  } catch (_) {
    // A dropped request: try again at the next tick.
  }
  if (round) {
    if (round.state !== live.dataset.state && ["done", "failed", "cancelled"].includes(round.state)) {
      window.location.reload();
      return;
    }
    live.dataset.state = round.state;
    show(round);
  }
  window.setTimeout(poll, POLL_MS);
}

if (live && live.dataset.apiUrl) window.setTimeout(poll, POLL_MS);
