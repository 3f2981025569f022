// The rater's queue: pulls a task, shows it, submits or skips it, and on to the next.
// Its state (the lease on screen, its form, a skip still undoable, a request in flight) lives
// here and nowhere else; the rest of the page asks for it through the returned functions.

import { api, postKeepalive } from "./api.js";
import { el, textBlock } from "./dom.js";
import { dropDraft, loadDraft, saveDraft } from "./drafts.js";
import { createForm } from "./form.js";

// Skipping waits this long before it tells the server, under a "Skipped — Undo" bar: a stray S
// must not throw away a half-written judgment. The draft is kept until the skip is sent.
const SKIP_UNDO_MS = 5000;

// The server's message for a field, without the field's internal name ("answers.fix: …"):
// it is shown under that field already.
function fieldMessage(data) {
  let message = data.detail || "Please check your answers.";
  if (data.field && message.startsWith(`${data.field}: `)) message = message.slice(data.field.length + 2);
  return message.charAt(0).toUpperCase() + message.slice(1);
}

// config: the page's URLs and project kind; stage, progressLine: elements; banner: banner.js;
// clock: clock.js.
export function createQueue({ config, stage, progressLine, banner, clock }) {
  const state = {
    lease: null, // the lease being worked on, as the API returned it
    form: null, // form.js's form for it
    busy: false,
    pendingSkip: null, // {lease, timer} while a skip can still be undone
  };

  function keepDraft() {
    if (!state.lease || !state.form) return;
    saveDraft(state.lease.id, {
      answers: state.form.collect(),
      criterion: state.form.activeCriterion,
      ms: clock.elapsedMs(),
    });
  }

  function render(current) {
    state.lease = current;
    const task = current.task;
    const codeLike = config.kind === "code";
    state.form = createForm(task, { codeLike, onChange: keepDraft });
    banner.hide();

    const promptSection = el(
      "section",
      { class: "card prompt" },
      el("h2", { id: "task-heading", tabindex: "-1", text: "Prompt" }),
      task.prompt.context ? textBlock(task.prompt.context, { codeLike, extraClass: "context" }) : null,
      textBlock(task.prompt.text, { codeLike }),
    );
    const outputs = el(
      "section",
      { class: `outputs outputs-${task.outputs.length > 1 ? "many" : "one"}` },
      ...task.outputs.map((output) =>
        el(
          "article",
          { class: "card output", "data-output": String(output.id) },
          el("h2", { text: task.outputs.length > 1 ? `Output ${output.label}` : "Output" }),
          textBlock(output.text, { codeLike }),
        ),
      ),
    );
    const expires = new Date(current.expires_at);
    const actions = el(
      "div",
      { class: "actions" },
      el("button", { type: "button", class: "ghost", text: "Skip (S)", onclick: skip }),
      el("span", { class: "muted", text: `Held for you until ${expires.toLocaleTimeString()}` }),
      el("button", { type: "submit", class: "primary", text: "Submit (Ctrl+Enter)" }),
    );
    const answersForm = el("form", { class: "card answers", novalidate: true }, ...state.form.boxes, actions);
    answersForm.addEventListener("submit", (event) => {
      event.preventDefault();
      submit();
    });
    // Only while this task is on screen: a textarea taken away with its form fires "change" as
    // it goes, which would file the next task's empty answers as a draft of that task.
    const keepThisDraft = () => {
      if (state.lease === current) keepDraft();
    };
    answersForm.addEventListener("input", keepThisDraft);
    answersForm.addEventListener("change", keepThisDraft);
    stage.replaceChildren(el("div", { class: "task-grid" }, el("div", { class: "task-content" }, promptSection, outputs), answersForm));

    const draft = loadDraft(current.id);
    if (draft) {
      state.form.restore(draft.answers || {});
      banner.show("Restored what you had written for this task.", "info");
    }
    clock.start(draft && draft.ms ? draft.ms : 0);
    state.form.setActiveCriterion(draft && Number.isInteger(draft.criterion) ? draft.criterion : 0, false);
    window.scrollTo(0, 0);
    // Focus moves to the new task, not to <body>: keyboard and screen reader users start here.
    document.getElementById("task-heading").focus({ preventScroll: true });
  }

  function showErrors(problems) {
    for (const [name, message] of problems) if (!state.form.showError(name, message)) banner.show(message);
    state.form.focusFirstInvalid();
  }

  const tryAgain = { label: "Try again", run: () => next() };

  // Shows the next task, or the end of the queue; says which ("task", "done"), or false on failure.
  // `answer` is next-task's answer when it is already known (a submission brought it along).
  async function next(answer = null) {
    if (state.busy) return false;
    state.busy = true;
    let shown = false;
    try {
      const { status, data } = answer || (await api("POST", config.nextTaskUrl));
      if (status === 200) {
        render(data);
        shown = "task";
      } else if (status === 204) {
        await showDone();
        shown = "done";
      } else banner.show((data && data.detail) || `The server answered ${status}.`, "error", tryAgain);
    } catch (_) {
      banner.show("Could not reach the server.", "error", tryAgain);
    } finally {
      state.busy = false;
    }
    refreshProgress();
    return shown;
  }

  // A banner action that leaves this task behind and asks for the next.
  const nextTask = { label: "Next task", run: () => { state.busy = false; next(); } };

  async function submit() {
    if (state.busy || !state.lease || !state.form) return;
    state.form.clearErrors();
    banner.hide();
    const answers = state.form.collect();
    const problems = state.form.problems(answers);
    if (problems.length) {
      showErrors(problems);
      return;
    }
    state.busy = true;
    keepDraft();
    const submitted = state.lease;
    try {
      // One request: the server saves the judgment, then leases the next task and sends it along.
      const { status, data } = await api("POST", config.submitUrl.replace("{id}", submitted.id), {
        answers,
        time_spent_ms: clock.elapsedMs(),
        next: true,
      });
      if (status === 201 || status === 200) {
        dropDraft(submitted.id);
        state.lease = null;
        state.busy = false;
        // next_error: saved, but no next task could be leased (the banner offers Try again).
        const following = data.next_error
          ? { status: 0, data: data.next_error }
          : { status: data.next ? 200 : 204, data: data.next };
        const shown = await next(following);
        // Say it was saved, unless the page is showing something more important: a failure
        // to load the next task, or the draft it restored.
        if (shown === "task" && banner.hidden) banner.show("Saved. Here is your next task.", "ok");
        else if (shown === "done") banner.show("Saved.", "ok");
        else if (!shown) {
          state.lease = null;
          stage.replaceChildren(el("p", { class: "muted", text: "Your answers were saved." }));
        }
        return;
      }
      if (status === 400 && data) {
        const question = (data.field || "").replace(/^answers\./, "").split(".")[0];
        showErrors([[question || "answers", fieldMessage(data)]]);
      } else if (status === 409 && data && data.code === "lease_expired") {
        dropDraft(submitted.id);
        banner.show(
          "Your time on this task ran out and other raters have completed it, so these answers could not be saved.",
          "warn",
          nextTask,
        );
      } else if (status === 409 || status === 404) {
        dropDraft(submitted.id);
        banner.show((data && data.detail) || "This task can no longer be submitted.", "warn", nextTask);
      } else {
        banner.show((data && data.detail) || `The server answered ${status}. Your answers are kept.`, "error", {
          label: "Retry",
          run: submit,
        });
      }
    } catch (_) {
      banner.show("Could not reach the server. Your answers are kept here; try again.", "error", { label: "Retry", run: submit });
    } finally {
      state.busy = false;
    }
  }

  function skip() {
    if (state.busy || !state.lease || state.pendingSkip) return;
    keepDraft();
    const skipped = state.lease;
    state.lease = null;
    state.form = null;
    clock.stop();
    state.pendingSkip = { lease: skipped, timer: setTimeout(sendSkip, SKIP_UNDO_MS) };
    stage.replaceChildren(el("p", { class: "muted", text: "Skipped. The next task comes in a few seconds." }));
    banner.show("Skipped —", "info", { label: "Undo", run: undoSkip });
    banner.focusAction();
  }

  function undoSkip() {
    if (!state.pendingSkip) return;
    clearTimeout(state.pendingSkip.timer);
    const kept = state.pendingSkip.lease;
    state.pendingSkip = null;
    render(kept);
    banner.show("Not skipped: the task is as you left it.", "info");
  }

  async function sendSkip() {
    if (!state.pendingSkip) return;
    const skipped = state.pendingSkip.lease;
    state.pendingSkip = null;
    state.busy = true;
    try {
      const { status, data } = await api("POST", config.skipUrl.replace("{id}", skipped.id));
      if (status !== 200 && status !== 404 && status !== 409) {
        state.pendingSkip = { lease: skipped, timer: null }; // not sent yet: Retry sends it again
        banner.show((data && data.detail) || `The server answered ${status}.`, "error", { label: "Retry", run: retrySkip });
        return;
      }
      dropDraft(skipped.id);
      state.busy = false;
      const shown = await next();
      if (shown === "task" && banner.hidden) banner.show("Skipped. Here is your next task.", "info");
    } catch (_) {
      state.pendingSkip = { lease: skipped, timer: null };
      banner.show("Could not reach the server.", "error", { label: "Retry", run: retrySkip });
    } finally {
      state.busy = false;
    }
  }

  function retrySkip() {
    if (!state.busy) sendSkip();
  }

  // Leaving the page during the undo time still skips (keepalive outlives the page).
  window.addEventListener("pagehide", () => {
    if (!state.pendingSkip) return;
    clearTimeout(state.pendingSkip.timer);
    postKeepalive(config.skipUrl.replace("{id}", state.pendingSkip.lease.id));
    dropDraft(state.pendingSkip.lease.id);
    state.pendingSkip = null;
  });

  async function refreshProgress() {
    try {
      const { status, data } = await api("GET", config.progressUrl);
      if (status === 200) {
        progressLine.textContent = `You: ${data.own_judgments} judged · project: ${data.tasks_done} of ${data.tasks} tasks complete`;
        return data;
      }
    } catch (_) {
      /* the line is a courtesy; the queue still works without it */
    }
    return null;
  }

  async function showDone() {
    state.lease = null;
    state.form = null;
    clock.stop();
    const data = await refreshProgress();
    stage.replaceChildren(
      el(
        "section",
        { class: "card done" },
        el("h2", { id: "done-heading", tabindex: "-1", text: "Nothing left for you right now" }),
        el("p", {
          text: data
            ? `You have made ${data.own_judgments} judgments in this project. ${data.tasks_remaining} tasks still wait for other raters.`
            : "The queue is empty for you.",
        }),
        el("p", {}, el("a", { href: "/", text: "Back to your projects" }), " · ", el("button", { type: "button", class: "link", text: "Check again", onclick: () => next() })),
      ),
    );
    document.getElementById("done-heading").focus({ preventScroll: true });
  }

  return {
    next,
    submit,
    skip,
    keepDraft,
    form: () => state.form,
    outputs: () => (state.lease ? state.lease.task.outputs : []),
  };
}
