// The written questions: feedback (what should be better) and fix (the output rewritten, with a
// word diff against the original beneath it).

import { charCount, el, INVISIBLE } from "../dom.js";
import { renderDiff } from "../diff.js";
import { questionBox } from "./box.js";

// ctx.original: the text a fix starts from ("" for feedback); ctx.codeLike: monospaced fixes.
export function build(question, ctx) {
  const fix = question.kind === "fix";
  const original = fix ? ctx.original : "";
  const area = el("textarea", {
    name: question.name,
    rows: fix ? 8 : 4,
    class: fix && ctx.codeLike ? "code" : "",
    placeholder: question.kind === "feedback" ? "What should this output do better? Be specific." : "",
    "aria-label": question.label,
  });
  area.value = original;
  const box = questionBox(question, area);
  if (fix) {
    const diff = el("div", { class: "diff", "aria-label": "Changes against the original" });
    const hint = el("p", { class: "hint", text: "Edit the output into what it should have been. Changes:" });
    box.insertBefore(hint, area);
    box.insertBefore(diff, area.nextSibling);
    // A textarea cannot show marks, and obeys the controls: say so, and let the diff show them.
    if (original.search(INVISIBLE) !== -1)
      box.insertBefore(
        el("p", { class: "hint", text: "This output holds invisible characters that reorder text: the box obeys them; the changes below show them as ⟪U+…⟫ marks." }),
        hint,
      );
    const update = () => renderDiff(diff, original, area.value);
    area.addEventListener("input", update);
    update();
  }
  return {
    question,
    box,
    area,
    get: () => {
      const value = area.value;
      if (fix && value === original) return null; // untouched
      return value.trim() ? value : null;
    },
    set: (value) => {
      area.value = value;
      area.dispatchEvent(new Event("input"));
    },
  };
}

export const tooLong = (noun, length, limit) =>
  `Your ${noun} is too long: ${length.toLocaleString("en-US")} characters; the limit for this task is ${limit.toLocaleString("en-US")}.`;

export function problem(question, value) {
  if (question.kind === "feedback") {
    if (question.required && !value) return "Write your feedback.";
    if (value && value.trim().length < (question.min_length || 1)) return `Write at least ${question.min_length} characters.`;
  } else {
    if (question.required && !value) return "Edit the output into a better one.";
    if (value && question.max_length && charCount(value) > question.max_length)
      return tooLong("fix", charCount(value), question.max_length);
  }
  return null;
}
