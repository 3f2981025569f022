// One task's answer form: each question built by its kind's module (questions/*.js), the answers
// collected and checked in question order, errors shown under their question, and what the
// keys act on: the highlighted likert criterion, the active comparison, the active ranking.
// Every question is collected under its own name, however many of one kind a task asks.

import * as likert from "./questions/likert.js";
import * as pairwise from "./questions/pairwise.js";
import * as ranking from "./questions/ranking.js";
import * as rubric from "./questions/rubric.js";
import * as text from "./questions/text.js";

const KINDS = { likert, pairwise, ranking, feedback: text, fix: text, rubric };

// task: the task as the API gives it; codeLike: monospaced fixes; onChange(): an answer changed
// in a way no input event reports (a reorder, a newly highlighted criterion).
export function createForm(task, { codeLike, onChange }) {
  const single = task.outputs.length === 1 ? task.outputs[0] : null;
  let activeCriterion = 0;
  let comparison = null;
  let rankingList = null;
  const ctx = {
    outputs: task.outputs,
    original: single ? single.text : "",
    codeLike,
    onChange,
    onCriterionClick: (entry) => setActiveCriterion(criteria.indexOf(entry)),
    onActivate: (handle) => activate(handle),
  };
  const handles = task.questions.filter((q) => KINDS[q.kind]).map((q) => KINDS[q.kind].build(q, ctx));
  const criteria = handles.flatMap((h) => h.entries || []);
  const comparisons = handles.filter((h) => h.question.kind === "pairwise");
  const rankings = handles.filter((h) => h.question.kind === "ranking");

  // Where a task asks several comparisons or rankings, the one the keys answer is marked.
  function activate(handle) {
    const group = handle.question.kind === "pairwise" ? comparisons : rankings;
    if (handle.question.kind === "pairwise") comparison = handle;
    else rankingList = handle;
    for (const h of group) {
      if (group.length > 1) h.box.classList.toggle("active", h === handle);
      if (h.setActive) h.setActive(h === handle);
    }
  }
  if (comparisons.length) activate(comparisons[0]);
  if (rankings.length) activate(rankings[0]);

  function setActiveCriterion(index, save = true) {
    if (!criteria.length) return;
    const before = activeCriterion;
    activeCriterion = Math.max(0, Math.min(criteria.length - 1, index));
    criteria.forEach((entry, i) => entry.row.classList.toggle("active", i === activeCriterion));
    if (save && activeCriterion !== before) onChange(); // the highlight survives a reload
  }

  const byName = (name) => handles.find((h) => h.question.name === name);

  return {
    boxes: handles.map((h) => h.box),

    collect() {
      const answers = {};
      for (const handle of handles) {
        const value = handle.get();
        if (value !== null) answers[handle.question.name] = value;
      }
      return answers;
    },

    restore(answers) {
      for (const handle of handles) {
        const value = answers[handle.question.name];
        if (value !== undefined && value !== null) handle.set(value);
      }
    },

    // [question name, message] for each answer the server would refuse, in question order.
    problems(answers) {
      const found = [];
      for (const handle of handles) {
        const message = KINDS[handle.question.kind].problem(handle.question, answers[handle.question.name]);
        if (message) found.push([handle.question.name, message]);
      }
      return found;
    },

    // The first question of a kind ("feedback", "fix"), whatever it is called.
    first: (kind) => handles.find((h) => h.question.kind === kind) || null,

    // Likert criteria, highlighted one at a time across all likert questions.
    hasCriteria: () => criteria.length > 0,
    get activeCriterion() {
      return activeCriterion;
    },
    setActiveCriterion,
    scoreActive(value) {
      const entry = criteria[activeCriterion];
      const [low, high] = entry.question.scale;
      if (value < low || value > high) return false;
      entry.set(value);
      return true;
    },

    // Comparisons: the active one, and moving to another.
    comparison: () => comparison,
    comparisonCount: () => comparisons.length,
    moveComparison(delta) {
      const index = comparisons.indexOf(comparison) + delta;
      if (index >= 0 && index < comparisons.length) activate(comparisons[index]);
    },

    // Rankings: J/K select within the active list and on into the next or previous one.
    hasRanking: () => rankings.length > 0,
    selectRanked(delta) {
      if (rankingList.select(delta)) return;
      const next = rankings[rankings.indexOf(rankingList) + delta];
      if (!next) return;
      activate(next);
      next.selectEnd(delta > 0 ? 0 : -1);
    },
    moveRanked: (delta) => rankingList.move(delta),

    clearErrors() {
      for (const box of handles.map((h) => h.box)) {
        box.classList.remove("invalid");
        const slot = box.querySelector(".field-error");
        slot.hidden = true;
        slot.textContent = "";
      }
    },

    // Shows the message under its question; false when no question has that name.
    showError(name, message) {
      const handle = byName(name);
      if (!handle) return false;
      const slot = handle.box.querySelector(".field-error");
      handle.box.classList.add("invalid");
      slot.textContent = message;
      slot.hidden = false;
      handle.box.scrollIntoView({ block: "nearest" });
      return true;
    },

    // Focus the first invalid question's first field (for scores, the first one left blank).
    focusFirstInvalid() {
      const handle = handles.find((h) => h.box.classList.contains("invalid"));
      if (!handle) return;
      let target = null;
      if (handle.question.kind === "likert") {
        const index = criteria.findIndex((entry) => entry.question === handle.question && entry.get() === null);
        if (index >= 0) {
          setActiveCriterion(index);
          target = criteria[index].row.querySelector("input");
        }
      }
      target ||= [...handle.box.querySelectorAll("textarea, input")].find((node) => node.offsetParent !== null);
      if (target) target.focus();
    },
  };
}
