// The rating page's keyboard shortcuts (listed in templates/annotate.html's help panel).
// F focuses the feedback question: the first question of kind "feedback", whatever its name
// ("explanation" in (QA)² projects). X focuses the first fix question.

import { STRENGTHS } from "./questions/pairwise.js";

// page: {form() and outputs() of the task on screen (null when none), submit(), skip(),
// changed() after a key changed an answer, panels: {toggle(id), close()}}.
export function installKeys(page) {
  document.addEventListener("keydown", (event) => {
    const typing = event.target.matches("textarea, input[type=text], input:not([type])");
    if ((event.ctrlKey || event.metaKey) && event.key === "Enter") {
      event.preventDefault();
      page.submit();
      return;
    }
    if (event.key === "Escape") {
      if (!page.panels.close() && typing) event.target.blur();
      return;
    }
    if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key;
    if (key === "?") return page.panels.toggle("help");
    if (key === "g" || key === "G") return page.panels.toggle("guidelines");
    const form = page.form();
    if (!form) return;
    if (key === "s" || key === "S") return page.skip();
    if (key === "f" || key === "F" || key === "x" || key === "X") {
      const question = form.first(key.toLowerCase() === "f" ? "feedback" : "fix");
      if (question) {
        event.preventDefault();
        question.area.focus();
      }
      return;
    }
    const comparison = form.comparison();
    if (comparison) {
      // A key that leaves the comparison answered moves on to the next one.
      const answered = () => {
        if (comparison.complete()) form.moveComparison(1);
        page.changed();
      };
      const outputs = page.outputs();
      if ((key === "a" || key === "A") && outputs[0]) {
        comparison.pick(String(outputs[0].id));
        return answered();
      }
      if ((key === "b" || key === "B") && outputs[1]) {
        comparison.pick(String(outputs[1].id));
        return answered();
      }
      if ((key === "t" || key === "T") && comparison.question.allow_ties) {
        comparison.pick("tie");
        return answered();
      }
      if (/^[1-4]$/.test(key)) {
        comparison.setStrength(STRENGTHS[Number(key) - 1][0]);
        return answered();
      }
      if (form.comparisonCount() > 1 && (key === "ArrowDown" || key === "ArrowUp")) {
        event.preventDefault();
        return form.moveComparison(key === "ArrowDown" ? 1 : -1);
      }
    }
    if (form.hasRanking()) {
      if (key === "j" || key === "ArrowDown") return form.selectRanked(1);
      if (key === "k" || key === "ArrowUp") return form.selectRanked(-1);
      if (key === "J") return form.moveRanked(1);
      if (key === "K") return form.moveRanked(-1);
    }
    if (form.hasCriteria()) {
      if (key === "ArrowDown" || key === "ArrowUp") {
        event.preventDefault();
        return form.setActiveCriterion(form.activeCriterion + (key === "ArrowDown" ? 1 : -1));
      }
      if (/^[0-9]$/.test(key) && form.scoreActive(Number(key))) {
        page.changed();
        form.setActiveCriterion(form.activeCriterion + 1);
      }
    }
  });
}
