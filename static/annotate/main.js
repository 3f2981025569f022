// The rating page's entry module (templates/annotate.html loads it with <script type="module">):
// wires the queue, the banner, the panels and the keys to the page, then asks for a task.
// check.js, a classic script, tells the rater when this module graph did not load.

import { createBanner } from "./banner.js";
import { createClock } from "./clock.js";
import { installKeys } from "./keys.js";
import { createPanels } from "./panels.js";
import { createQueue } from "./queue.js";

const stage = document.getElementById("stage");
const queue = createQueue({
  config: JSON.parse(document.getElementById("annotate-config").textContent),
  stage,
  progressLine: document.getElementById("progress"),
  banner: createBanner(document.getElementById("banner")),
  clock: createClock(),
});
installKeys({
  form: queue.form,
  outputs: queue.outputs,
  submit: queue.submit,
  skip: queue.skip,
  changed: queue.keepDraft,
  panels: createPanels(["guidelines", "help"]),
});
stage.dataset.started = "";
queue.next();
