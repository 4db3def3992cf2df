// Staff dashboard: polls the REST API, draws progress bars and SVG charts (no CDN, no inline script).
(function () {
  "use strict";
  const select = document.getElementById("project-select");
  if (select) select.addEventListener("change", function () { select.form.submit(); });
  const root = document.getElementById("dashboard");
  if (!root) return;
  const project = root.dataset.project;
  const errorBox = document.getElementById("dashboard-error");
  const SVG = "http://www.w3.org/2000/svg";

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
  function cell(text) { const td = document.createElement("td"); td.textContent = text; return td; }
  function fmt(value) {
    if (typeof value !== "number") return String(value);
    return Number.isInteger(value) || Math.abs(value) >= 100 ? value.toFixed(0) : value.toFixed(3);
  }
  function summary(metrics) {
    const keys = ["val_accuracy", "reward_mean", "kl", "reward_gain", "eval_wins", "eval_losses", "eval_p_value", "tasks_created", "train_loss", "version", "promoted"];
    return keys.filter(function (k) { return metrics && metrics[k] !== undefined; }).map(function (k) { return k + " " + fmt(metrics[k]); }).join(", ");
  }
  function button(label, onClick, cls) {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = label; b.className = cls || "";
    b.addEventListener("click", onClick);
    return b;
  }
  function act(promise) { errorBox.textContent = ""; promise.then(refresh).catch(function (e) { errorBox.textContent = e.message; }); }

  function drawChart(svg, series, options) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const W = 420, H = 200, pad = 30;
    const axis = document.createElementNS(SVG, "path");
    axis.setAttribute("d", "M" + pad + " 10 V" + (H - pad) + " H" + (W - 10));
    axis.setAttribute("class", "axis");
    svg.appendChild(axis);
    series.forEach(function (line, index) {
      if (!line.points.length) return;
      const xs = line.points.map(function (p) { return p[0]; }), ys = line.points.map(function (p) { return p[1]; });
      const x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
      const y0 = options.yMin !== undefined ? options.yMin : Math.min.apply(null, ys);
      const y1 = options.yMax !== undefined ? options.yMax : Math.max.apply(null, ys);
      const sx = function (x) { return pad + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (W - pad - 10); };
      const sy = function (y) { return H - pad - (y1 === y0 ? 0.5 : (y - y0) / (y1 - y0)) * (H - pad - 10); };
      const path = document.createElementNS(SVG, "polyline");
      path.setAttribute("points", line.points.map(function (p) { return sx(p[0]) + "," + sy(p[1]); }).join(" "));
      path.setAttribute("class", "line line-" + index);
      svg.appendChild(path);
      line.points.forEach(function (p) {
        const dot = document.createElementNS(SVG, "circle");
        dot.setAttribute("cx", sx(p[0])); dot.setAttribute("cy", sy(p[1])); dot.setAttribute("r", 3);
        dot.setAttribute("class", "dot line-" + index);
        svg.appendChild(dot);
      });
      const label = document.createElementNS(SVG, "text");
      label.setAttribute("x", pad + 5 + index * 140); label.setAttribute("y", 12);
      label.setAttribute("class", "legend line-" + index);
      label.textContent = line.name + " (" + fmt(y0) + " .. " + fmt(y1) + ")";
      svg.appendChild(label);
    });
  }

  function duration(seconds) {
    const s = Math.round(seconds);
    if (s < 90) return s + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function renderRuns(runs) {
    const body = document.querySelector("#runs tbody");
    body.textContent = "";
    runs.forEach(function (run) {
      const tr = document.createElement("tr");
      tr.dataset.run = run.id; tr.className = "run run-" + run.status;
      tr.appendChild(cell((run.parent ? "  ↳ " : "") + "#" + run.id));
      tr.appendChild(cell(run.kind));
      tr.appendChild(cell(run.status + (run.cancel_requested && run.status === "running" ? " (cancelling)" : "")));
      const progress = document.createElement("td");
      const bar = document.createElement("progress");
      bar.max = 100; bar.value = Math.round(run.progress * 100); bar.className = "run-progress";
      progress.appendChild(bar);
      progress.appendChild(document.createTextNode(" " + Math.round(run.progress * 100) + "%"));
      if (run.eta_seconds !== null && run.eta_seconds !== undefined) {
        const eta = document.createElement("span");
        eta.className = "run-eta"; eta.textContent = " · about " + duration(run.eta_seconds) + " left";
        progress.appendChild(eta);
      }
      tr.appendChild(progress);
      tr.appendChild(cell(summary(run.metrics)));
      const actions = document.createElement("td");
      if (run.status === "queued" || run.status === "running") actions.appendChild(button("Cancel", function () { act(api("POST", "/api/v1/training-runs/" + run.id + "/cancel/")); }));
      if (run.error) actions.appendChild(button("Error", function () { document.getElementById("run-error").textContent = run.error; }, "link"));
      tr.appendChild(actions);
      body.appendChild(tr);
    });
    const ppo = runs.find(function (r) { return r.kind === "ppo" && r.metric_series && r.metric_series.length; });
    drawChart(document.getElementById("chart-ppo"), ppo ? [
      { name: "reward", points: ppo.metric_series.filter(function (p) { return p.reward_mean !== undefined; }).map(function (p) { return [p.step, p.reward_mean]; }) },
      { name: "KL", points: ppo.metric_series.filter(function (p) { return p.kl !== undefined; }).map(function (p) { return [p.step, p.kl]; }) },
    ] : [], {});
  }

  function renderVersions(versions) {
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
      if (v.status !== "active") actions.appendChild(button("Promote", function () { act(api("POST", "/api/v1/model-versions/" + v.id + "/promote/")); }));
      tr.appendChild(actions);
      body.appendChild(tr);
    });
    const rm = versions.filter(function (v) { return v.kind === "reward" && typeof v.metrics.val_accuracy === "number"; }).sort(function (a, b) { return a.number - b.number; });
    drawChart(document.getElementById("chart-rm"), [{ name: "val accuracy", points: rm.map(function (v) { return [v.number, v.metrics.val_accuracy]; }) }], { yMin: 0, yMax: 1 });
  }

  async function refresh() {
    try {
      const runs = await api("GET", "/api/v1/training-runs/?project=" + project + "&limit=30");
      const versions = await api("GET", "/api/v1/model-versions/?project=" + project + "&limit=100");
      renderRuns(runs.results || runs);
      renderVersions(versions.results || versions);
    } catch (e) { errorBox.textContent = e.message; }
  }

  document.querySelectorAll(".start-run").forEach(function (b) {
    b.addEventListener("click", function () { act(api("POST", "/api/v1/training-runs/", { project: Number(project), kind: b.dataset.kind })); });
  });
  document.querySelectorAll(".rollback").forEach(function (b) {
    b.addEventListener("click", function () { act(api("POST", "/api/v1/projects/" + project + "/rollback/", { kind: b.dataset.kind })); });
  });
  refresh();
  setInterval(refresh, 1500);
})();
