// The rating page: pulls a task from the queue, shows it, collects answers, submits, repeats.
// Everything from the model or the prompt is inserted with textContent: never as HTML.
(() => {
  "use strict";

  const config = JSON.parse(document.getElementById("annotate-config").textContent);
  const stage = document.getElementById("stage");
  const banner = document.getElementById("banner");
  const progressLine = document.getElementById("progress");
  const STRENGTHS = [
    ["much_better", "much better"],
    ["better", "better"],
    ["slightly_better", "slightly better"],
    ["about_the_same", "about the same"],
  ];

  let lease = null; // the lease being worked on, as the API returned it
  let form = null; // {likert: [...], pairwise, ranking, texts, rubric} handles of the current form
  let visibleMs = 0; // time on task while the page is visible
  let visibleSince = null;
  let busy = false;
  let pendingSkip = null; // {lease, timer} while a skip can still be undone
  const SKIP_UNDO_MS = 5000;
  // Bidirectional controls and other invisible format characters: shown as marks, never obeyed
  // ("\u202Egpj.exe" would read as "exe.jpg"). The admin marks the same list (templatetags/text.py).
  const INVISIBLE = /[\u202A-\u202E\u2066-\u2069\u200E\u200F\u061C]/g;

  // ---------------------------------------------------------------- helpers

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  // The text as nodes: plain text, with each invisible format character replaced by a visible mark.
  function markedNodes(text) {
    if (text.search(INVISIBLE) === -1) return [document.createTextNode(text)]; // search ignores lastIndex
    const nodes = [];
    let last = 0;
    for (const match of text.matchAll(INVISIBLE)) {
      if (match.index > last) nodes.push(document.createTextNode(text.slice(last, match.index)));
      const code = `U+${match[0].codePointAt(0).toString(16).toUpperCase().padStart(4, "0")}`;
      nodes.push(el("span", { class: "invisible-char", title: `Invisible character ${code}`, text: `⟪${code}⟫` }));
      last = match.index + match[0].length;
    }
    if (last < text.length) nodes.push(document.createTextNode(text.slice(last)));
    return nodes;
  }

  // Characters as the server counts them (code points, not UTF-16 units).
  const charCount = (text) => text.length - (text.match(/[\uD800-\uDBFF][\uDC00-\uDFFF]/g) || []).length;

  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  async function api(method, url, body) {
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

  function showBanner(message, kind = "error", action = null) {
    banner.replaceChildren(el("span", { text: message }));
    if (action) banner.append(" ", el("button", { type: "button", class: "link", text: action.label, onclick: action.run }));
    banner.className = `banner ${kind}`;
    banner.hidden = false;
  }

  function hideBanner() {
    banner.hidden = true;
    banner.replaceChildren();
  }

  const draftKey = (leaseId) => `refinery:draft:${leaseId}`;

  function saveDraft() {
    if (!lease || !form) return;
    try {
      localStorage.setItem(
        draftKey(lease.id),
        JSON.stringify({
          answers: collectAnswers(),
          ranking: form.ranking ? form.ranking.order() : null,
          criterion: activeCriterion,
          ms: elapsedMs(),
        }),
      );
    } catch (_) {
      /* storage full or disabled: the page still keeps the text while it stays open */
    }
  }

  function loadDraft(leaseId) {
    try {
      return JSON.parse(localStorage.getItem(draftKey(leaseId)) || "null");
    } catch (_) {
      return null;
    }
  }

  function dropDraft(leaseId) {
    try {
      localStorage.removeItem(draftKey(leaseId));
    } catch (_) {
      /* ignore */
    }
  }

  function startClock(alreadyMs = 0) {
    visibleMs = alreadyMs;
    visibleSince = document.hidden ? null : performance.now();
  }

  function elapsedMs() {
    return Math.round(visibleMs + (visibleSince === null ? 0 : performance.now() - visibleSince));
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden && visibleSince !== null) {
      visibleMs += performance.now() - visibleSince;
      visibleSince = null;
    } else if (!document.hidden && lease && visibleSince === null) {
      visibleSince = performance.now();
    }
  });

  // ---------------------------------------------------------------- word diff for fixes

  function wordDiff(before, after) {
    const a = before.split(/(\s+)/);
    const b = after.split(/(\s+)/);
    if (a.length * b.length > 4_000_000) return [["=", after]]; // too long to diff in the page
    const table = Array.from({ length: a.length + 1 }, () => new Uint32Array(b.length + 1));
    for (let i = a.length - 1; i >= 0; i--)
      for (let j = b.length - 1; j >= 0; j--)
        table[i][j] = a[i] === b[j] ? table[i + 1][j + 1] + 1 : Math.max(table[i + 1][j], table[i][j + 1]);
    const parts = [];
    let i = 0;
    let j = 0;
    const push = (op, text) => {
      const last = parts[parts.length - 1];
      if (last && last[0] === op) last[1] += text;
      else parts.push([op, text]);
    };
    while (i < a.length && j < b.length) {
      if (a[i] === b[j]) {
        push("=", a[i]);
        i++;
        j++;
      } else if (table[i + 1][j] >= table[i][j + 1]) push("-", a[i++]);
      else push("+", b[j++]);
    }
    while (i < a.length) push("-", a[i++]);
    while (j < b.length) push("+", b[j++]);
    return parts;
  }

  function renderDiff(target, before, after) {
    const nodes = wordDiff(before, after).flatMap(([op, text]) =>
      op === "=" ? markedNodes(text) : [el(op === "+" ? "ins" : "del", {}, ...markedNodes(text))],
    );
    target.replaceChildren(...nodes);
  }

  // ---------------------------------------------------------------- rendering a task

  function textBlock(text, extraClass = "") {
    const codeLike = config.kind === "code";
    return el("pre", { class: `text ${codeLike ? "code" : ""} ${extraClass}`.trim() }, ...markedNodes(text));
  }

  function questionBox(question, ...content) {
    return el(
      "fieldset",
      { class: "question", "data-question": question.name, "data-kind": question.kind },
      // Labels often say "(optional)" themselves; say it once.
      el("legend", { text: question.label + (question.required || /\(optional\)/i.test(question.label) ? "" : " (optional)") }),
      ...content,
      el("p", { class: "field-error", "data-error-for": question.name, hidden: true }),
    );
  }

  function buildLikert(question, handles) {
    const [low, high] = question.scale;
    const rows = question.criteria.map((criterion) => {
      const name = `${question.name}.${criterion}`;
      const radios = [];
      for (let value = low; value <= high; value++) {
        const input = el("input", { type: "radio", name, value: String(value), "aria-label": `${criterion} ${value}` });
        radios.push(el("label", { class: "score" }, input, el("span", { text: String(value) })));
      }
      const row = el(
        "div",
        { class: "likert-row", "data-criterion": criterion },
        el("span", { class: "criterion", text: criterion.replace(/_/g, " ") }),
        el("span", { class: "scores" }, ...radios),
      );
      row.addEventListener("click", () => setActiveCriterion(handles.likert.indexOf(entry)));
      const entry = {
        question,
        criterion,
        row,
        get: () => {
          const checked = row.querySelector("input:checked");
          return checked ? Number(checked.value) : null;
        },
        set: (value) => {
          const input = row.querySelector(`input[value="${value}"]`);
          if (input) input.checked = true;
        },
      };
      handles.likert.push(entry);
      return row;
    });
    return questionBox(question, el("p", { class: "hint", text: question.hint || `${low} = poor … ${high} = excellent` }), ...rows);
  }

  function buildPairwise(question, outputs, handles) {
    const choices = outputs.map((output) =>
      el(
        "label",
        { class: "choice" },
        el("input", { type: "radio", name: `${question.name}.preferred`, value: String(output.id) }),
        el("span", { text: `${output.label} is better` }),
      ),
    );
    if (question.allow_ties)
      choices.push(
        el(
          "label",
          { class: "choice" },
          el("input", { type: "radio", name: `${question.name}.preferred`, value: "tie" }),
          el("span", { text: "About the same (T)" }),
        ),
      );
    const strengths = STRENGTHS.map(([value, label], index) =>
      el(
        "label",
        { class: "choice" },
        el("input", { type: "radio", name: `${question.name}.strength`, value }),
        el("span", { text: `${index + 1} · ${label}` }),
      ),
    );
    const box = questionBox(
      question,
      el("div", { class: "choices" }, ...choices),
      el("div", { class: "choices strengths" }, el("span", { class: "hint", text: "How much better?" }), ...strengths),
    );
    const pick = (value) => {
      const input = box.querySelector(`input[name="${question.name}.preferred"][value="${value}"]`);
      if (input) input.checked = true;
      if (value === "tie") setStrength("about_the_same");
      else if (box.querySelector(`input[value="about_the_same"]:checked`)) clearStrength();
    };
    const setStrength = (value) => {
      const input = box.querySelector(`input[name="${question.name}.strength"][value="${value}"]`);
      if (input) input.checked = true;
      if (value === "about_the_same" && question.allow_ties) {
        box.querySelector(`input[name="${question.name}.preferred"][value="tie"]`).checked = true;
      }
    };
    const clearStrength = () => box.querySelectorAll(`input[name="${question.name}.strength"]`).forEach((i) => (i.checked = false));
    handles.pairwise = {
      question,
      pick,
      setStrength,
      get: () => {
        const preferred = box.querySelector(`input[name="${question.name}.preferred"]:checked`);
        const strength = box.querySelector(`input[name="${question.name}.strength"]:checked`);
        if (!preferred && !strength) return null;
        const answer = {
          strength: strength ? strength.value : preferred && preferred.value === "tie" ? "about_the_same" : null,
        };
        // No side chosen yet: leave `preferred` out (null would mean a tie).
        if (preferred) answer.preferred = preferred.value === "tie" ? null : Number(preferred.value);
        return answer;
      },
      set: (value) => {
        if (!value) return;
        if (value.preferred !== undefined) pick(value.preferred === null ? "tie" : String(value.preferred));
        if (value.strength) setStrength(value.strength);
      },
    };
    return box;
  }

  function buildRanking(question, outputs, handles) {
    const list = el("ol", { class: "ranking", "aria-label": "Ranking, best first" });
    const byId = new Map(outputs.map((o) => [o.id, o]));
    let selected = 0;
    let dragged = null;
    const item = (output) => {
      const li = el(
        "li",
        { draggable: "true", tabindex: "-1", "data-output": String(output.id) },
        el("span", { class: "handle", text: "⠿" }),
        el("strong", { text: output.label }),
        el("span", { class: "excerpt" }, ...markedNodes(output.text.slice(0, 140))),
      );
      li.addEventListener("dragstart", () => (dragged = li));
      li.addEventListener("dragover", (event) => {
        event.preventDefault();
        if (dragged && dragged !== li) {
          const after = event.offsetY > li.offsetHeight / 2;
          li.parentNode.insertBefore(dragged, after ? li.nextSibling : li);
        }
      });
      li.addEventListener("dragend", () => {
        dragged = null;
        mark();
        saveDraft();
      });
      li.addEventListener("click", () => {
        selected = [...list.children].indexOf(li);
        mark();
      });
      return li;
    };
    const mark = () => [...list.children].forEach((li, i) => li.classList.toggle("selected", i === selected));
    const render = (order) => {
      list.replaceChildren(...order.map((id) => item(byId.get(id))));
      mark();
    };
    render(outputs.map((o) => o.id));
    handles.ranking = {
      question,
      order: () => [...list.children].map((li) => Number(li.dataset.output)),
      restore: (order) => {
        if (Array.isArray(order) && order.length === outputs.length && order.every((id) => byId.has(id))) render(order);
      },
      select: (delta) => {
        selected = Math.max(0, Math.min(list.children.length - 1, selected + delta));
        mark();
      },
      move: (delta) => {
        const items = [...list.children];
        const target = selected + delta;
        if (target < 0 || target >= items.length) return;
        const node = items[selected];
        if (delta > 0) list.insertBefore(node, items[target].nextSibling);
        else list.insertBefore(node, items[target]);
        selected = target;
        mark();
        saveDraft();
      },
    };
    return questionBox(question, el("p", { class: "hint", text: "Best first. Drag, or J/K to select and Shift+J/K to move." }), list);
  }

  function buildText(question, handles, initial, original) {
    const area = el("textarea", {
      name: question.name,
      rows: question.kind === "fix" ? 8 : 4,
      class: question.kind === "fix" && config.kind === "code" ? "code" : "",
      placeholder: question.kind === "feedback" ? "What should this output do better? Be specific." : "",
      "aria-label": question.label,
    });
    area.value = initial || "";
    const box = questionBox(question, area);
    let diff = null;
    if (question.kind === "fix") {
      diff = el("div", { class: "diff", "aria-label": "Changes against the original" });
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
    handles.texts[question.name] = {
      question,
      area,
      original,
      get: () => {
        const value = area.value;
        if (question.kind === "fix" && value === original) return null; // untouched
        return value.trim() ? value : null;
      },
      set: (value) => {
        area.value = value;
        area.dispatchEvent(new Event("input"));
      },
    };
    return box;
  }

  function buildRubric(question, handles) {
    const flags = question.flags.map((flag) => {
      const check = el("input", { type: "checkbox", name: `${question.name}.${flag.name}`, value: flag.name });
      const note = flag.needs_text
        ? el("input", { type: "text", class: "note", name: `${question.name}.${flag.name}.note`, placeholder: "Which, and why?", hidden: true })
        : null;
      check.addEventListener("change", () => {
        if (note) {
          note.hidden = !check.checked;
          if (check.checked) note.focus();
        }
      });
      return { flag, check, note, node: el("div", { class: "flag" }, el("label", {}, check, el("span", { text: flag.label })), note) };
    });
    handles.rubric[question.name] = {
      question,
      get: () => {
        const raised = flags.filter((f) => f.check.checked);
        if (!raised.length) return null;
        const notes = {};
        for (const f of raised) if (f.note && f.note.value.trim()) notes[f.flag.name] = f.note.value;
        return { flags: raised.map((f) => f.flag.name), notes };
      },
      set: (value) => {
        for (const f of flags) {
          f.check.checked = value.flags.includes(f.flag.name);
          if (f.note) {
            f.note.hidden = !f.check.checked;
            f.note.value = (value.notes || {})[f.flag.name] || "";
          }
        }
      },
    };
    return questionBox(question, ...flags.map((f) => f.node));
  }

  let activeCriterion = 0;

  function setActiveCriterion(index, save = true) {
    if (!form || !form.likert.length) return;
    const before = activeCriterion;
    activeCriterion = Math.max(0, Math.min(form.likert.length - 1, index));
    form.likert.forEach((entry, i) => entry.row.classList.toggle("active", i === activeCriterion));
    if (save && activeCriterion !== before) saveDraft(); // the highlight survives a reload
  }

  function render(current) {
    lease = current;
    const task = current.task;
    form = { likert: [], pairwise: null, ranking: null, texts: {}, rubric: {} };
    activeCriterion = 0;
    hideBanner();

    const promptSection = el(
      "section",
      { class: "card prompt" },
      el("h2", { id: "task-heading", tabindex: "-1", text: "Prompt" }),
      task.prompt.context ? textBlock(task.prompt.context, "context") : null,
      textBlock(task.prompt.text),
    );
    const outputs = el(
      "section",
      { class: `outputs outputs-${task.outputs.length > 1 ? "many" : "one"}` },
      ...task.outputs.map((output) =>
        el(
          "article",
          { class: "card output", "data-output": String(output.id) },
          el("h2", { text: task.outputs.length > 1 ? `Output ${output.label}` : "Output" }),
          textBlock(output.text),
        ),
      ),
    );
    const single = task.outputs.length === 1 ? task.outputs[0] : null;
    const questions = task.questions.map((question) => {
      switch (question.kind) {
        case "likert":
          return buildLikert(question, form);
        case "pairwise":
          return buildPairwise(question, task.outputs, form);
        case "ranking":
          return buildRanking(question, task.outputs, form);
        case "feedback":
          return buildText(question, form, "", "");
        case "fix":
          return buildText(question, form, single ? single.text : "", single ? single.text : "");
        case "rubric":
          return buildRubric(question, form);
        default:
          return null;
      }
    });
    const expires = new Date(current.expires_at);
    const actions = el(
      "div",
      { class: "actions" },
      el("button", { type: "button", class: "ghost", text: "Skip (S)", onclick: skip }),
      el("span", { class: "muted", text: `Held for you until ${expires.toLocaleTimeString()}` }),
      el("button", { type: "submit", class: "primary", text: "Submit (Ctrl+Enter)" }),
    );
    const answersForm = el("form", { class: "card answers", novalidate: true }, ...questions, actions);
    answersForm.addEventListener("submit", (event) => {
      event.preventDefault();
      submit();
    });
    answersForm.addEventListener("input", saveDraft);
    answersForm.addEventListener("change", saveDraft);
    stage.replaceChildren(el("div", { class: "task-grid" }, el("div", { class: "task-content" }, promptSection, outputs), answersForm));

    const draft = loadDraft(current.id);
    if (draft) {
      restoreAnswers(draft.answers || {});
      if (form.ranking && draft.ranking) form.ranking.restore(draft.ranking);
      showBanner("Restored what you had written for this task.", "info");
    }
    startClock(draft && draft.ms ? draft.ms : 0);
    setActiveCriterion(draft && Number.isInteger(draft.criterion) ? draft.criterion : 0, false);
    window.scrollTo(0, 0);
    // Focus moves to the new task, not to <body>: keyboard and screen reader users start here.
    document.getElementById("task-heading").focus({ preventScroll: true });
  }

  function restoreAnswers(answers) {
    for (const entry of form.likert) {
      const value = (answers[entry.question.name] || {})[entry.criterion];
      if (value !== undefined && value !== null) entry.set(value);
    }
    if (form.pairwise && answers[form.pairwise.question.name]) form.pairwise.set(answers[form.pairwise.question.name]);
    for (const [name, handle] of Object.entries(form.texts)) if (answers[name]) handle.set(answers[name]);
    for (const [name, handle] of Object.entries(form.rubric)) if (answers[name]) handle.set(answers[name]);
  }

  function collectAnswers() {
    const answers = {};
    for (const entry of form.likert) {
      const value = entry.get();
      if (value !== null) (answers[entry.question.name] ||= {})[entry.criterion] = value;
    }
    if (form.pairwise) {
      const value = form.pairwise.get();
      if (value) answers[form.pairwise.question.name] = value;
    }
    if (form.ranking) answers[form.ranking.question.name] = form.ranking.order();
    for (const [name, handle] of Object.entries(form.texts)) {
      const value = handle.get();
      if (value !== null) answers[name] = value;
    }
    for (const [name, handle] of Object.entries(form.rubric)) {
      const value = handle.get();
      if (value) answers[name] = value;
    }
    return answers;
  }

  // ---------------------------------------------------------------- validation and errors

  function clearErrors() {
    stage.querySelectorAll(".field-error").forEach((p) => {
      p.hidden = true;
      p.textContent = "";
    });
    stage.querySelectorAll(".question.invalid").forEach((q) => q.classList.remove("invalid"));
  }

  function fieldError(questionName, message) {
    const box = stage.querySelector(`.question[data-question="${CSS.escape(questionName)}"]`);
    const slot = stage.querySelector(`[data-error-for="${CSS.escape(questionName)}"]`);
    if (!box || !slot) {
      showBanner(message);
      return;
    }
    box.classList.add("invalid");
    slot.textContent = message;
    slot.hidden = false;
    box.scrollIntoView({ block: "nearest" });
  }

  // Focus the first invalid question's first field (for scores, the first one left blank).
  function focusFirstInvalid() {
    const box = stage.querySelector(".question.invalid");
    if (!box) return;
    let target = null;
    if (box.dataset.kind === "likert") {
      const index = form.likert.findIndex((entry) => entry.question.name === box.dataset.question && entry.get() === null);
      if (index >= 0) {
        setActiveCriterion(index);
        target = form.likert[index].row.querySelector("input");
      }
    }
    target ||= [...box.querySelectorAll("textarea, input")].find((node) => node.offsetParent !== null);
    if (target) target.focus();
  }

  function checkRequired(answers) {
    const problems = [];
    for (const question of lease.task.questions) {
      const value = answers[question.name];
      if (question.kind === "likert") {
        const given = (c) => value && value[c] !== undefined && value[c] !== null;
        const missing = question.criteria.filter((c) => !given(c));
        // An optional question may be left blank, but not half-scored.
        const started = question.criteria.some(given);
        if (missing.length && (question.required || started)) problems.push([question.name, `Score ${missing.map((c) => c.replace(/_/g, " ")).join(", ")}.`]);
      } else if (question.kind === "pairwise") {
        if (!value) {
          if (question.required) problems.push([question.name, "Choose the better output (A or B)."]);
        } else if (value.preferred === undefined && value.strength !== "about_the_same") {
          problems.push([question.name, "Choose the better output (A or B)."]);
        } else if (!value.strength) {
          problems.push([question.name, "Say how much better (1–4)."]);
        }
      } else if (question.kind === "feedback") {
        if (question.required && !value) problems.push([question.name, "Write your feedback."]);
        else if (value && value.trim().length < (question.min_length || 1))
          problems.push([question.name, `Write at least ${question.min_length} characters.`]);
      } else if (question.kind === "fix") {
        if (question.required && !value) problems.push([question.name, "Edit the output into a better one."]);
        else if (value && question.max_length && charCount(value) > question.max_length)
          problems.push([question.name, tooLong("fix", charCount(value), question.max_length)]);
      } else if (question.kind === "rubric" && value) {
        for (const flag of question.flags)
          if (flag.needs_text && value.flags.includes(flag.name) && !(value.notes || {})[flag.name])
            problems.push([question.name, `Say what “${flag.label}” refers to.`]);
      }
    }
    return problems;
  }

  const tooLong = (noun, length, limit) =>
    `Your ${noun} is too long: ${length.toLocaleString("en-US")} characters; the limit for this task is ${limit.toLocaleString("en-US")}.`;

  // The server's message for a field, without the field's internal name ("answers.fix: …"):
  // it is shown under that field already.
  function fieldMessage(data) {
    let message = data.detail || "Please check your answers.";
    if (data.field && message.startsWith(`${data.field}: `)) message = message.slice(data.field.length + 2);
    return message.charAt(0).toUpperCase() + message.slice(1);
  }

  // ---------------------------------------------------------------- queue calls

  // Shows the next task, or the end of the queue; says which ("task", "done"), or false on failure.
  async function next() {
    if (busy) return false;
    busy = true;
    let shown = false;
    try {
      const { status, data } = await api("POST", config.nextTaskUrl);
      if (status === 200) {
        render(data);
        shown = "task";
      } else if (status === 204) {
        await showDone();
        shown = "done";
      } else showBanner((data && data.detail) || `The server answered ${status}.`, "error", { label: "Try again", run: next });
    } catch (_) {
      showBanner("Could not reach the server.", "error", { label: "Try again", run: next });
    } finally {
      busy = false;
    }
    refreshProgress();
    return shown;
  }

  async function submit() {
    if (busy || !lease || !form) return;
    clearErrors();
    hideBanner();
    const answers = collectAnswers();
    const problems = checkRequired(answers);
    if (problems.length) {
      problems.forEach(([name, message]) => fieldError(name, message));
      focusFirstInvalid();
      return;
    }
    busy = true;
    saveDraft();
    const submitted = lease;
    try {
      const { status, data } = await api("POST", config.submitUrl.replace("{id}", submitted.id), {
        answers,
        time_spent_ms: elapsedMs(),
      });
      if (status === 201 || status === 200) {
        dropDraft(submitted.id);
        lease = null;
        busy = false;
        const shown = await next();
        // Say it was saved, unless the page is showing something more important: a failure
        // to load the next task, or the draft it restored.
        if (shown === "task" && banner.hidden) showBanner("Saved. Here is your next task.", "ok");
        else if (shown === "done") showBanner("Saved.", "ok");
        else if (!shown) {
          lease = null;
          stage.replaceChildren(el("p", { class: "muted", text: "Your answers were saved." }));
        }
        return;
      }
      if (status === 400 && data) {
        const question = (data.field || "").replace(/^answers\./, "").split(".")[0];
        fieldError(question || "answers", fieldMessage(data));
        focusFirstInvalid();
      } else if (status === 409 && data && data.code === "lease_expired") {
        dropDraft(submitted.id);
        showBanner(
          "Your time on this task ran out and other raters have completed it, so these answers could not be saved.",
          "warn",
          { label: "Next task", run: () => { busy = false; next(); } },
        );
      } else if (status === 409 || status === 404) {
        dropDraft(submitted.id);
        showBanner((data && data.detail) || "This task can no longer be submitted.", "warn", {
          label: "Next task",
          run: () => { busy = false; next(); },
        });
      } else {
        showBanner((data && data.detail) || `The server answered ${status}. Your answers are kept.`, "error", {
          label: "Retry",
          run: submit,
        });
      }
    } catch (_) {
      showBanner("Could not reach the server. Your answers are kept here; try again.", "error", { label: "Retry", run: submit });
    } finally {
      busy = false;
    }
  }

  // Skipping waits SKIP_UNDO_MS before it tells the server, under a "Skipped — Undo" bar: a
  // stray S must not throw away a half-written judgment. The draft is kept until the skip is sent.
  function skip() {
    if (busy || !lease || pendingSkip) return;
    saveDraft();
    const skipped = lease;
    lease = null;
    form = null;
    visibleSince = null;
    pendingSkip = { lease: skipped, timer: setTimeout(sendSkip, SKIP_UNDO_MS) };
    stage.replaceChildren(el("p", { class: "muted", text: "Skipped. The next task comes in a few seconds." }));
    showBanner("Skipped —", "info", { label: "Undo", run: undoSkip });
    banner.querySelector("button").focus();
  }

  function undoSkip() {
    if (!pendingSkip) return;
    clearTimeout(pendingSkip.timer);
    const kept = pendingSkip.lease;
    pendingSkip = null;
    render(kept);
    showBanner("Not skipped: the task is as you left it.", "info");
  }

  async function sendSkip() {
    if (!pendingSkip) return;
    const skipped = pendingSkip.lease;
    pendingSkip = null;
    busy = true;
    try {
      const { status, data } = await api("POST", config.skipUrl.replace("{id}", skipped.id));
      if (status !== 200 && status !== 404 && status !== 409) {
        pendingSkip = { lease: skipped, timer: null }; // not sent yet: Retry sends it again
        showBanner((data && data.detail) || `The server answered ${status}.`, "error", { label: "Retry", run: retrySkip });
        return;
      }
      dropDraft(skipped.id);
      busy = false;
      const shown = await next();
      if (shown === "task" && banner.hidden) showBanner("Skipped. Here is your next task.", "info");
    } catch (_) {
      pendingSkip = { lease: skipped, timer: null };
      showBanner("Could not reach the server.", "error", { label: "Retry", run: retrySkip });
    } finally {
      busy = false;
    }
  }

  function retrySkip() {
    if (!busy) sendSkip();
  }

  // Leaving the page during the undo time still skips (keepalive outlives the page).
  window.addEventListener("pagehide", () => {
    if (!pendingSkip) return;
    clearTimeout(pendingSkip.timer);
    fetch(config.skipUrl.replace("{id}", pendingSkip.lease.id), {
      method: "POST",
      credentials: "same-origin",
      keepalive: true,
      headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" },
    });
    dropDraft(pendingSkip.lease.id);
    pendingSkip = null;
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
    lease = null;
    form = null;
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
        el("p", {}, el("a", { href: "/", text: "Back to your projects" }), " · ", el("button", { type: "button", class: "link", text: "Check again", onclick: next })),
      ),
    );
    document.getElementById("done-heading").focus({ preventScroll: true });
  }

  // ---------------------------------------------------------------- panels and keys

  // A panel takes focus when it opens and gives it back to where it was when it closes.
  const PANELS = ["guidelines", "help"];
  let focusBeforePanel = null;

  function openPanel(id) {
    for (const other of PANELS) if (other !== id) document.getElementById(other).hidden = true;
    const panel = document.getElementById(id);
    if (!panel.contains(document.activeElement) && !PANELS.some((p) => document.getElementById(p).contains(document.activeElement)))
      focusBeforePanel = document.activeElement;
    panel.hidden = false;
    panel.focus();
  }

  function closePanels() {
    const open = PANELS.map((p) => document.getElementById(p)).filter((panel) => !panel.hidden);
    if (!open.length) return false;
    open.forEach((panel) => (panel.hidden = true));
    const back = focusBeforePanel;
    focusBeforePanel = null;
    if (back && back.isConnected && back !== document.body) back.focus();
    else if (document.getElementById("task-heading")) document.getElementById("task-heading").focus();
    return true;
  }

  function toggle(id) {
    if (document.getElementById(id).hidden) openPanel(id);
    else closePanels();
  }

  document.getElementById("guidelines-toggle").addEventListener("click", () => toggle("guidelines"));
  document.getElementById("help-toggle").addEventListener("click", () => toggle("help"));
  document.querySelectorAll("[data-close]").forEach((b) => b.addEventListener("click", closePanels));

  document.addEventListener("keydown", (event) => {
    const typing = event.target.matches("textarea, input[type=text], input:not([type])");
    if ((event.ctrlKey || event.metaKey) && event.key === "Enter") {
      event.preventDefault();
      submit();
      return;
    }
    if (event.key === "Escape") {
      if (!closePanels() && typing) event.target.blur();
      return;
    }
    if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key;
    if (key === "?") return toggle("help");
    if (key === "g" || key === "G") return toggle("guidelines");
    if (!form) return;
    if (key === "s" || key === "S") return skip();
    if (key === "f" || key === "F") {
      // The first written-feedback question, whatever its name ("explanation" in (QA)² projects).
      const feedback = Object.values(form.texts).find((h) => h.question.kind === "feedback");
      if (feedback) {
        event.preventDefault();
        feedback.area.focus();
      }
      return;
    }
    if (key === "x" || key === "X") {
      const fix = Object.values(form.texts).find((h) => h.question.kind === "fix");
      if (fix) {
        event.preventDefault();
        fix.area.focus();
      }
      return;
    }
    if (form.pairwise) {
      const outputs = lease.task.outputs;
      if (key === "a" || key === "A") return choose(outputs[0]);
      if (key === "b" || key === "B") return choose(outputs[1]);
      if ((key === "t" || key === "T") && form.pairwise.question.allow_ties) {
        form.pairwise.pick("tie");
        return saveDraft();
      }
      if (/^[1-4]$/.test(key)) {
        form.pairwise.setStrength(STRENGTHS[Number(key) - 1][0]);
        return saveDraft();
      }
    }
    if (form.ranking) {
      if (key === "j" || key === "ArrowDown") return form.ranking.select(1);
      if (key === "k" || key === "ArrowUp") return form.ranking.select(-1);
      if (key === "J") return form.ranking.move(1);
      if (key === "K") return form.ranking.move(-1);
    }
    if (form.likert.length) {
      if (key === "ArrowDown") {
        event.preventDefault();
        return setActiveCriterion(activeCriterion + 1);
      }
      if (key === "ArrowUp") {
        event.preventDefault();
        return setActiveCriterion(activeCriterion - 1);
      }
      if (/^[0-9]$/.test(key)) {
        const entry = form.likert[activeCriterion];
        const [low, high] = entry.question.scale;
        const value = Number(key);
        if (value >= low && value <= high) {
          entry.set(value);
          saveDraft();
          setActiveCriterion(activeCriterion + 1);
        }
      }
    }
  });

  function choose(output) {
    if (!output) return;
    form.pairwise.pick(String(output.id));
    saveDraft();
  }

  next();
})();
