// Staff dashboard: polls the REST API, draws the tables and SVG charts (no CDN, no inline script).
// Whatever comes from the API goes in through textContent or setAttribute, never as HTML.
(function () {
  "use strict";
  const select = document.getElementById("project-select");
  if (select) select.addEventListener("change", function () { select.form.submit(); });
  const root = document.getElementById("dashboard");
  if (!root) return;
  const project = root.dataset.project;
  const errorBox = document.getElementById("dashboard-error");
  const statusLine = document.getElementById("dashboard-status");
  const SVG = "http://www.w3.org/2000/svg";
  let versionsNow = [];

  function csrf() {
    const match = document.cookie.match(/(?:^|; )csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }
  async function api(method, url, body) {
    const response = await fetch(url, {
      method: method,
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrf() },
      body: body ? JSON.stringify(body) : undefined,
    });
    const data = response.status === 204 ? null : await response.json();
    if (!response.ok) throw new Error((data && (data.detail || JSON.stringify(data))) || response.statusText);
    return data;
  }
  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }
  function fmt(value) {
    if (typeof value !== "number") return String(value);
    return Number.isInteger(value) || Math.abs(value) >= 100 ? value.toFixed(0) : value.toFixed(3);
  }
  function signed(value) { return (value > 0 ? "+" : "") + value.toFixed(3); }
  function percent(value) { return (value * 100).toFixed(1) + "%"; }
  function summary(metrics) {
    const keys = ["val_accuracy", "reward_mean", "kl", "reward_gain", "eval_wins", "eval_losses", "eval_p_value", "tasks_created", "prompts_answered", "prompts_failed", "train_loss", "version", "promoted"];
    return keys.filter(function (k) { return metrics && metrics[k] !== undefined && metrics[k] !== null; }).map(function (k) { return k + " " + fmt(metrics[k]); }).join(", ");
  }
  function button(label, onClick, cls) {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = label; b.className = cls || "";
    b.addEventListener("click", onClick);
    return b;
  }
  function act(promise) {
    errorBox.textContent = ""; statusLine.textContent = "";
    promise.then(function (result) {
      if (result && result.detail) statusLine.textContent = result.detail;
      return refresh();
    }).catch(function (e) { errorBox.textContent = e.message; });
  }

  // ------------------------------------------------------------------ times

  function duration(seconds) {
    const s = Math.round(seconds);
    if (s < 90) return s + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }
  function exactDuration(seconds) {
    const s = Math.round(seconds);
    const pad = function (n) { return (n < 10 ? "0" : "") + n; };
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + pad(s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + pad(Math.floor((s % 3600) / 60)) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }
  function localTime(date) {
    const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    if (date.toDateString() === new Date().toDateString()) return time;
    return date.toLocaleDateString([], { year: "numeric", month: "short", day: "numeric" }) + " " + time;
  }
  function timeCell(iso, cls, prefix) {
    const td = document.createElement("td");
    td.className = cls;
    if (!iso) { td.textContent = "—"; return td; }
    const date = new Date(iso);
    const t = document.createElement("time");
    t.setAttribute("datetime", date.toISOString());
    t.title = date.toLocaleString();
    t.textContent = (prefix || "") + localTime(date);
    td.appendChild(t);
    return td;
  }

  // ------------------------------------------------------------------ charts

  // The smallest of 1, 2, 5 x 10^k that is at least `raw`.
  function niceStep(raw) {
    const exp = Math.floor(Math.log10(raw));
    const f = raw / Math.pow(10, exp);
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * Math.pow(10, exp);
  }
  // Ticks at nice numbers covering [lo, hi]; the domain is widened to the outer ticks.
  function niceScale(lo, hi, maxTicks, integer) {
    if (lo === hi) {
      if (integer) return { min: lo - 1, max: hi + 1, ticks: [lo], decimals: 0 };
      const pad = Math.abs(lo) / 10 || 1;
      lo = lo >= 0 ? Math.max(0, lo - pad) : lo - pad;  // a KL of 0 gets no negative ticks
      hi += pad;
    }
    let step = niceStep((hi - lo) / Math.max(1, maxTicks - 1));
    if (integer && step < 1) step = 1;
    const first = Math.floor(lo / step + 1e-9), last = Math.ceil(hi / step - 1e-9);
    const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
    const ticks = [];
    for (let i = first; i <= last; i++) ticks.push(Number((i * step).toFixed(decimals)));
    return { min: first * step, max: last * step, ticks: ticks, decimals: decimals };
  }
  function tickText(value, decimals, format) {
    if (format === "percent") return Math.round(value * 100) + "%";
    if (Math.abs(value) >= 10000) return new Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 1 }).format(value);
    const text = value.toFixed(decimals);
    return /^-0(\.0*)?$/.test(text) ? text.slice(1) : text;
  }
  function node(name, attrs, parent, text) {
    const e = document.createElementNS(SVG, name);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, attrs[k]); });
    if (text !== undefined) e.textContent = text;
    parent.appendChild(e);
    return e;
  }
  function width(textNode) { return textNode.getComputedTextLength(); }

  const W = 560, H = 280, MAX_DOTS = 60;

  // spec: {xTitle, integerX, padX, axes: [{title, min, max, format}, ...right axis optional], series: [{name, axis, points: [[x, y]]}]}
  // Layout, top to bottom: legend band, plot, x tick labels, x title; left and right: axis
  // title, tick labels, plot. Every band is measured, so nothing overlaps whatever the labels.
  function drawChart(svg, emptyNote, spec) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const series = spec.series.map(function (s) {
      return Object.assign({}, s, { points: s.points.filter(function (p) { return Number.isFinite(p[0]) && Number.isFinite(p[1]); }) });
    }).filter(function (s) { return s.points.length; });
    // an SVG element has no `hidden` property: the attribute, which dashboard.css honours
    svg.toggleAttribute("hidden", !series.length);
    emptyNote.hidden = Boolean(series.length);
    if (!series.length) return;
    // the axes that have data: the first on the left, a second on the right
    const used = spec.axes.map(function (axis, a) { return a; }).filter(function (a) {
      return series.some(function (s) { return (s.axis || 0) === a; });
    }).slice(0, 2);
    series.forEach(function (s) { s.side = Math.max(0, used.indexOf(s.axis || 0)); });
    const twoAxes = used.length > 1;

    // legend above the plot, wrapping onto a second row when needed
    const legend = node("g", { class: "legend" }, svg);
    let lx = 8, ly = 14;
    series.forEach(function (s, i) {
      const item = node("g", { class: "legend-item series-" + i }, legend);
      const label = node("text", { class: "legend-label" }, item, s.name + (twoAxes ? (s.side === 1 ? " (right axis)" : " (left axis)") : ""));
      const itemWidth = 24 + width(label);
      if (lx > 8 && lx + itemWidth > W - 8) { lx = 8; ly += 18; }
      node("line", { class: "legend-swatch", x1: lx, y1: ly - 4, x2: lx + 18, y2: ly - 4 }, item);
      label.setAttribute("x", lx + 24); label.setAttribute("y", ly);
      lx += itemWidth + 18;
    });
    const top = ly + 18, bottom = H - 42, plotH = bottom - top;

    // y axes: nice ticks, labels measured to size the margins
    const yTicks = Math.max(2, Math.min(6, Math.floor(plotH / 26) + 1));
    const axes = used.map(function (index, a) {
      const axis = spec.axes[index], ys = [];
      series.forEach(function (s) { if (s.side === a) s.points.forEach(function (p) { ys.push(p[1]); }); });
      let lo = Math.min.apply(null, ys), hi = Math.max.apply(null, ys);
      if (axis.min !== undefined) lo = Math.min(lo, axis.min);
      if (axis.max !== undefined) hi = Math.max(hi, axis.max);
      const scale = niceScale(lo, hi, yTicks, false);
      const colour = twoAxes ? " series-" + series.findIndex(function (s) { return s.side === a; }) : "";
      const group = node("g", { class: "y-axis y-axis-" + (a === 0 ? "left" : "right") + colour }, svg);
      const labels = scale.ticks.map(function (v) { return node("text", { class: "tick-label" }, group, tickText(v, scale.decimals, axis.format)); });
      return { spec: axis, scale: scale, group: group, labels: labels, labelWidth: Math.max.apply(null, labels.map(width)) };
    });
    const left = 30 + axes[0].labelWidth, right = W - (twoAxes ? 30 + axes[1].labelWidth : 24), plotW = right - left;

    // x axis: as many nice ticks as fit side by side with room between their labels
    const xs = [];
    series.forEach(function (s) { s.points.forEach(function (p) { xs.push(p[0]); }); });
    const xLo = Math.min.apply(null, xs), xHi = Math.max.apply(null, xs);
    const xGroup = node("g", { class: "x-axis" }, svg);
    let xScale, xLabels;
    for (let wanted = Math.min(10, Math.floor(plotW / 40) + 1); ; wanted--) {
      xScale = niceScale(xLo, xHi, Math.max(2, wanted), spec.integerX);
      while (xGroup.firstChild) xGroup.removeChild(xGroup.firstChild);
      xLabels = xScale.ticks.map(function (v) { return node("text", { class: "tick-label" }, xGroup, tickText(v, xScale.decimals)); });
      const step = xScale.ticks.length > 1 ? xScale.ticks[1] - xScale.ticks[0] : 0;
      const gap = step ? plotW / (xScale.max - xScale.min + (spec.padX ? step : 0)) * step : Infinity;
      if (wanted <= 2 || Math.max.apply(null, xLabels.map(width)) + 10 <= gap) break;
    }
    // versions are few and discrete: half a step of room on each side keeps their dots off the axes
    const xPad = spec.padX && xScale.ticks.length > 1 ? (xScale.ticks[1] - xScale.ticks[0]) / 2 : 0;
    const x0 = xScale.min - xPad, x1 = xScale.max + xPad;
    const sx = function (x) { return left + (x - x0) / (x1 - x0) * plotW; };
    const syFor = function (scale) { return function (y) { return bottom - (y - scale.min) / (scale.max - scale.min) * plotH; }; };

    // grid and frame under everything else
    const grid = node("g", { class: "grid" }, svg);
    svg.insertBefore(grid, legend);
    const sy0 = syFor(axes[0].scale);
    axes[0].scale.ticks.forEach(function (v) { node("line", { x1: left, x2: right, y1: sy0(v), y2: sy0(v) }, grid); });
    node("rect", { class: "plot-area", x: left, y: top, width: plotW, height: plotH }, grid);
    node("path", { class: "axis", d: "M" + left + " " + top + " V" + bottom + " H" + right + (twoAxes ? " V" + top : "") }, svg);

    xScale.ticks.forEach(function (v, i) {
      const x = sx(v);
      node("line", { class: "tick", x1: x, x2: x, y1: bottom, y2: bottom + 4 }, xGroup);
      xLabels[i].setAttribute("x", x); xLabels[i].setAttribute("y", bottom + 16); xLabels[i].setAttribute("text-anchor", "middle");
    });
    node("text", { class: "axis-title x-title", x: left + plotW / 2, y: H - 6, "text-anchor": "middle" }, svg, spec.xTitle);
    axes.forEach(function (axis, a) {
      const sy = syFor(axis.scale), atRight = a === 1;
      const edge = atRight ? right : left;
      axis.scale.ticks.forEach(function (v, i) {
        node("line", { class: "tick", x1: edge, x2: edge + (atRight ? 4 : -4), y1: sy(v), y2: sy(v) }, axis.group);
        const label = axis.labels[i];
        label.setAttribute("x", atRight ? edge + 7 : edge - 7); label.setAttribute("y", sy(v));
        label.setAttribute("dy", "0.32em"); label.setAttribute("text-anchor", atRight ? "start" : "end");
      });
      const tx = atRight ? W - 12 : 12, ty = top + plotH / 2;
      node("text", { class: "axis-title y-title", x: tx, y: ty, "text-anchor": "middle", transform: "rotate(" + (atRight ? 90 : -90) + " " + tx + " " + ty + ")" }, axis.group, axis.spec.title);
    });

    series.forEach(function (s, i) {
      const sy = syFor(axes[s.side].scale);
      const g = node("g", { class: "series series-" + i, "data-series": s.name }, svg);
      node("polyline", { class: "series-line", points: s.points.map(function (p) { return sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1); }).join(" ") }, g);
      if (s.points.length <= MAX_DOTS) {
        s.points.forEach(function (p) {
          const dot = node("circle", { class: "dot", cx: sx(p[0]), cy: sy(p[1]), r: 3 }, g);
          node("title", {}, dot, s.name + " at " + spec.xTitle + " " + fmt(p[0]) + ": " + fmt(p[1]));
        });
      }
    });
  }

  // ------------------------------------------------------------------ runs

  const STAGE_NAMES = { reward: "reward model", ppo: "PPO", generate: "generate", sft: "SFT" };
  function promotedText(m) {
    if (m.version === undefined) return "";
    return ", v" + m.version + (m.promoted ? " promoted" : " not promoted");
  }
  function stageText(stage) {
    const m = stage.metrics || {};
    const name = STAGE_NAMES[stage.kind] || stage.kind;
    if (stage.status !== "succeeded") return name + ": " + stage.status;
    if (stage.kind === "reward") return name + ": val accuracy " + (typeof m.val_accuracy === "number" ? percent(m.val_accuracy) : "n/a") + promotedText(m);
    if (stage.kind === "ppo") {
      return name + ": reward gain " + (typeof m.reward_gain === "number" ? signed(m.reward_gain) : "n/a") + ", KL " + (typeof m.kl === "number" ? m.kl.toFixed(3) : "n/a") + promotedText(m);
    }
    if (stage.kind === "generate") return name + ": " + (m.tasks_created || 0) + " tasks created";
    return name + ": " + summary(m);
  }
  function cycleMetrics(run) {
    const list = document.createElement("ul");
    list.className = "stage-metrics";
    const seen = {};
    (run.stages || []).forEach(function (stage) {
      seen[stage.kind] = true;
      const li = document.createElement("li");
      li.dataset.stage = stage.kind; li.textContent = stageText(stage);
      list.appendChild(li);
    });
    Object.keys(run.metrics || {}).forEach(function (kind) {  // a stage the cycle skipped has no run of its own
      const result = run.metrics[kind];
      if (seen[kind] || !result || typeof result !== "object" || !result.skipped) return;
      const li = document.createElement("li");
      li.dataset.stage = kind; li.textContent = (STAGE_NAMES[kind] || kind) + ": skipped (" + result.skipped + ")";
      list.insertBefore(li, list.firstChild);
    });
    return list;
  }

  // an "endpoints" run: the prompts left out, each with its reason
  function failureList(metrics) {
    const details = document.createElement("details");
    details.className = "run-failures";
    const title = document.createElement("summary");
    title.textContent = metrics.prompts_failed + " prompts failed" + (metrics.failures.length < metrics.prompts_failed ? " (the first " + metrics.failures.length + ")" : "");
    details.appendChild(title);
    const list = document.createElement("ul");
    metrics.failures.forEach(function (failure) {
      const item = document.createElement("li");
      const reasons = Object.keys(failure.reasons).map(function (name) { return failure.reasons[name]; }).join("; ");
      item.textContent = "prompt " + failure.prompt_id + " “" + failure.prompt + "”: " + reasons;
      list.appendChild(item);
    });
    details.appendChild(list);
    return details;
  }

  function runRow(run, isStage) {
    const tr = document.createElement("tr");
    tr.dataset.run = run.id; tr.className = "run run-" + run.status + (isStage ? " stage" : "");
    tr.appendChild(cell((isStage ? "↳ " : "") + "#" + run.id, "run-id"));
    tr.appendChild(cell(run.kind, "run-kind"));
    const statusCell = cell(run.status + (run.cancel_requested && run.status === "running" ? " (cancelling)" : ""), "run-status");
    if (run.outcome && !isStage) {  // what it achieved, in words: "stopped after the reward model: not promoted, because ..."
      const outcome = document.createElement("div");
      outcome.className = "run-outcome" + (/not promoted|stopped after/.test(run.outcome) ? " stopped" : "");
      outcome.textContent = run.outcome;
      statusCell.appendChild(outcome);
    }
    tr.appendChild(statusCell);
    const progress = document.createElement("td");
    const bar = document.createElement("progress");
    bar.max = 100; bar.value = Math.round(run.progress * 100); bar.className = "run-progress";
    progress.appendChild(bar);
    progress.appendChild(document.createTextNode(" " + Math.round(run.progress * 100) + "%"));
    const hasEta = run.eta_seconds !== null && run.eta_seconds !== undefined;
    if (hasEta) {
      const eta = document.createElement("span");
      eta.className = "run-eta"; eta.textContent = " · about " + duration(run.eta_seconds) + " left";
      progress.appendChild(eta);
    }
    tr.appendChild(progress);
    tr.appendChild(timeCell(run.started_at, "run-started"));
    if (run.finished_at || !hasEta) tr.appendChild(timeCell(run.finished_at, "run-finished"));
    else tr.appendChild(timeCell(new Date(Date.now() + run.eta_seconds * 1000).toISOString(), "run-finished expected", "≈ "));
    const took = run.duration_seconds === null || run.duration_seconds === undefined ? "—" : exactDuration(run.duration_seconds) + (run.status === "running" ? " so far" : "");
    tr.appendChild(cell(took, "run-duration"));
    const metrics = document.createElement("td");
    metrics.className = "run-metrics";
    if (run.kind === "cycle") metrics.appendChild(cycleMetrics(run));
    else metrics.textContent = summary(run.metrics);
    if (run.metrics && run.metrics.failures && run.metrics.failures.length) metrics.appendChild(failureList(run.metrics));
    tr.appendChild(metrics);
    const actions = document.createElement("td");
    actions.className = "run-actions";
    if (!isStage && (run.status === "queued" || run.status === "running")) actions.appendChild(button("Cancel", function () { act(api("POST", "/api/v1/training-runs/" + run.id + "/cancel/")); }));
    if (run.error) actions.appendChild(button("Error", function () { document.getElementById("run-error").textContent = run.error; }, "link"));
    tr.appendChild(actions);
    return tr;
  }

  function renderRuns(runs) {
    const body = document.querySelector("#runs tbody");
    body.textContent = "";
    const ids = {};
    runs.forEach(function (r) { ids[r.id] = true; });
    // a cycle's stages right under it, in the order they ran
    runs.filter(function (r) { return !r.parent || !ids[r.parent]; }).forEach(function (run) {
      body.appendChild(runRow(run, Boolean(run.parent)));
      runs.filter(function (r) { return r.parent === run.id; }).sort(function (a, b) { return a.id - b.id; }).forEach(function (stage) {
        body.appendChild(runRow(stage, true));
      });
    });
    if (!runs.length) {
      const tr = document.createElement("tr");
      const td = cell("No runs yet: start one above.", "empty");
      td.colSpan = 9;
      tr.appendChild(td);
      body.appendChild(tr);
    }
    renderSamples(runs);
    const ppo = runs.find(function (r) { return r.kind === "ppo" && r.metric_series && r.metric_series.length; });
    const caption = document.getElementById("chart-ppo-caption");
    caption.textContent = ppo ? "Latest PPO run: #" + ppo.id + " (" + ppo.status + ")" : "";
    const series = ppo ? ppo.metric_series : [];
    drawChart(document.getElementById("chart-ppo"), document.getElementById("chart-ppo-empty"), {
      xTitle: "step",
      integerX: true,
      // KL as the k3 estimate (exp(d) - 1 - d per token, d = log p_ref - log p), never below 0; the k1
      // estimate (log p - log p_ref) is unbiased but a batch of it can be negative (#20), so it is not charted
      axes: [{ title: "mean reward" }, { title: "KL to reference (k3)" }],
      series: [
        { name: "mean reward", axis: 0, points: series.filter(function (p) { return typeof p.reward_mean === "number"; }).map(function (p) { return [p.step, p.reward_mean]; }) },
        { name: "KL (k3, ≥ 0)", axis: 1, points: series.filter(function (p) { return typeof p.kl_k3 === "number"; }).map(function (p) { return [p.step, p.kl_k3]; }) },
      ],
    });
  }

  // the latest policy run's held-out prompts, both policies' replies side by side (#20): what changed, in words
  function renderSamples(runs) {
    const card = document.getElementById("policy-samples");
    const run = runs.find(function (r) { return r.metrics && Array.isArray(r.metrics.eval_samples) && r.metrics.eval_samples.length; });
    card.hidden = !run;
    if (!run) return;
    const m = run.metrics;
    document.getElementById("policy-samples-caption").textContent =
      run.kind.toUpperCase() + " run #" + run.id + (m.version !== undefined ? " (policy v" + m.version + (m.promoted ? ", promoted" : ", not promoted") + ")" : "") +
      ": the first " + m.eval_samples.length + " of " + m.eval_prompts + " held-out prompts, never trained on, sampled with the same seed. " +
      "The reward model's score is under each reply; on all of them the new policy won " + m.eval_wins + " and lost " + m.eval_losses + ".";
    const body = card.querySelector("tbody");
    body.textContent = "";
    m.eval_samples.forEach(function (sample) {
      const tr = document.createElement("tr");
      tr.appendChild(cell(sample.prompt + (sample.turns > 1 ? " (last of " + sample.turns + " turns)" : ""), "sample-prompt"));
      [["reference", "reward_reference"], ["candidate", "reward_candidate"]].forEach(function (keys) {
        const td = cell(sample[keys[0]] || "(empty reply)", "sample-reply");
        const score = document.createElement("div");
        score.className = "sample-reward muted";
        score.textContent = "reward " + (typeof sample[keys[1]] === "number" ? sample[keys[1]].toFixed(2) : "n/a");
        td.appendChild(score);
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
  }

  // ------------------------------------------------------------------ versions

  function activeOf(kind) { return versionsNow.find(function (v) { return v.kind === kind && v.status === "active"; }); }
  // what services.roll_back returns to: the latest once-active version before the current one
  function previousOf(current) {
    return versionsNow.filter(function (v) {
      return v.kind === current.kind && v.status === "retired" && v.promoted_at && v.number < current.number;
    }).sort(function (a, b) { return b.number - a.number; })[0];
  }

  function renderActive(active) {
    const policy = active.find(function (v) { return v.kind === "policy"; });
    const reward = active.find(function (v) { return v.kind === "reward"; });
    const policyBox = document.getElementById("active-policy");
    policyBox.textContent = policy ? "policy v" + policy.number : "built-in default policy";
    policyBox.dataset.builtin = policy ? "0" : "1";
    document.getElementById("active-reward").textContent = reward ? "reward v" + reward.number : "none yet";
    document.getElementById("rollback-policy").disabled = !policy;
    document.getElementById("use-builtin-policy").disabled = !policy;
    document.getElementById("rollback-reward").disabled = !reward;
  }

  function renderVersions(versions) {
    versionsNow = versions;
    const body = document.querySelector("#versions tbody");
    body.textContent = "";
    versions.forEach(function (v) {
      const tr = document.createElement("tr");
      tr.className = "version version-" + v.status; tr.dataset.version = v.id;
      tr.appendChild(cell(v.kind + " v" + v.number));
      tr.appendChild(cell(v.status));
      tr.appendChild(cell(summary(v.metrics)));
      tr.appendChild(cell(v.promotion_note));
      const actions = document.createElement("td");
      if (v.status !== "active" && v.gate_refused && !v.promoted_at) {  // the gate said no: an explicit, recorded override
        actions.appendChild(button("Promote anyway…", function () {
          const question = "The promotion gate refused " + v.kind + " v" + v.number + ": " + v.promotion_note +
            "\n\nMake it the active " + v.kind + " anyway? This override is recorded with your name.";
          if (window.confirm(question)) act(api("POST", "/api/v1/model-versions/" + v.id + "/promote/", { override: true }));
        }, "override"));
      } else if (v.status !== "active") {
        actions.appendChild(button("Promote", function () {
          if (window.confirm("Make " + v.kind + " v" + v.number + " the active " + v.kind + "?")) act(api("POST", "/api/v1/model-versions/" + v.id + "/promote/"));
        }));
      }
      tr.appendChild(actions);
      body.appendChild(tr);
    });
    const rm = versions.filter(function (v) { return v.kind === "reward" && typeof v.metrics.val_accuracy === "number"; }).sort(function (a, b) { return a.number - b.number; });
    drawChart(document.getElementById("chart-rm"), document.getElementById("chart-rm-empty"), {
      xTitle: "version",
      integerX: true,
      padX: true,
      axes: [{ title: "validation accuracy", min: 0, max: 1, format: "percent" }],
      series: [{ name: "validation accuracy", axis: 0, points: rm.map(function (v) { return [v.number, v.metrics.val_accuracy]; }) }],
    });
  }

  function rollbackQuestion(kind, to) {
    const current = activeOf(kind);
    const name = kind === "policy" ? "policy" : "reward model";
    const builtin = "the built-in default policy? No policy version will be active: PPO and generation will start from the built-in policy.";
    if (!current) return "Roll back the " + name + "?";
    if (to === "builtin") return "Stop using policy v" + current.number + " and use " + builtin;
    const previous = previousOf(current);
    if (previous) return "Roll back the " + name + " from v" + current.number + " to v" + previous.number + "?";
    if (kind === "policy") return "Roll back the policy from v" + current.number + " to " + builtin;
    return "Roll back the " + name + " from v" + current.number + "? It has no earlier active version, so this will be refused.";
  }

  let refreshing = false, again = false;
  async function refresh() {
    if (refreshing) { again = true; return; }  // after an action: poll once more when this one is done
    refreshing = true; again = false;
    try {
      const base = "/api/v1/model-versions/?project=" + project;
      const results = await Promise.all([
        api("GET", "/api/v1/training-runs/?project=" + project + "&limit=30"),
        api("GET", base + "&limit=100"),
        api("GET", base + "&status=active"),
      ]);
      renderVersions(results[1].results || results[1]);
      renderRuns(results[0].results || results[0]);
      renderActive(results[2].results || results[2]);
    } catch (e) {
      errorBox.textContent = e.message;
    } finally {
      refreshing = false;
      if (again) refresh();
    }
  }

  // the built-in default policy while `make run` builds it: its progress, then the page again
  const defaultPolicy = document.getElementById("default-policy");
  if (defaultPolicy && defaultPolicy.dataset.state === "building") {
    const pollDefault = function () {
      api("GET", defaultPolicy.dataset.url).then(function (state) {
        if (state.state !== "building") { window.location.reload(); return; }
        const bar = document.getElementById("default-policy-progress");
        if (bar) bar.value = state.fraction;
        const text = state.message;
        document.getElementById("default-policy-message").textContent = text.charAt(0).toUpperCase() + text.slice(1) + ".";
        setTimeout(pollDefault, 2000);
      }).catch(function () { setTimeout(pollDefault, 5000); });
    };
    setTimeout(pollDefault, 2000);
  }

  document.querySelectorAll(".start-run").forEach(function (b) {
    b.addEventListener("click", function () {
      if (b.dataset.confirm && !window.confirm(b.dataset.confirm)) return;  // says what will run
      act(api("POST", "/api/v1/training-runs/", { project: Number(project), kind: b.dataset.kind }));
    });
  });
  const endpointForm = document.getElementById("endpoint-run-form");
  if (endpointForm) {
    endpointForm.addEventListener("submit", function (event) {
      event.preventDefault();
      const data = new FormData(endpointForm);
      const file = document.getElementById("endpoint-run-file").files[0];
      if (file) data.delete("prompts"); else data.delete("file");
      const chosen = data.getAll("endpoints").length;
      const what = file ? "the prompts in " + file.name : data.get("prompts") + " of the project's prompts";
      if (!window.confirm("Ask " + chosen + " endpoints for replies to " + what + " and make comparison tasks of them?")) return;
      act(fetch(endpointForm.dataset.url, { method: "POST", body: data, credentials: "same-origin", headers: { "X-CSRFToken": csrf() } })
        .then(function (response) {
          return response.json().then(function (body) {
            if (!response.ok) throw new Error((body.detail || JSON.stringify(body)) + (body.errors ? ": " + body.errors.map(function (e) { return "line " + e.line + ": " + e.reason; }).join("; ") : ""));
            endpointForm.reset();
            return { detail: "Run #" + body.id + " started: the endpoints are answering." };
          });
        }));
    });
  }
  document.querySelectorAll(".rollback").forEach(function (b) {
    b.addEventListener("click", function () {
      if (!window.confirm(rollbackQuestion(b.dataset.kind, b.dataset.to))) return;
      act(api("POST", "/api/v1/projects/" + project + "/rollback/", { kind: b.dataset.kind, to: b.dataset.to }));
    });
  });
  refresh();
  setInterval(refresh, 1500);
})();
