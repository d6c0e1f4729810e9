// parallelaverage viewer: plain JavaScript, no libraries, nothing loaded from elsewhere.
// Every value from the database is put on the page as text (textContent), never as HTML.
"use strict";

(() => {
  const POLL_MS = 2000;
  const PAGE_SIZE = 100;
  const MAX_FACETS = 8;
  const KNOWN_STATUSES = ["running", "submitted", "created", "completed", "ended", "not_launched", "failed", "cancelled"];
  const SVG_NS = "http://www.w3.org/2000/svg";

  // What is shown; kept in the URL's fragment so that reloading and the back button work.
  const view = { fn: "", status: "", warnings: false, args: {}, offset: 0, job: "" };
  let serverOffsetMs = 0; // server clock minus this browser's clock
  let inFlight = false;
  let detailsKey = "";     // what the details panel shows, to redraw it only when it changed
  let detailsActive = false;
  const openFailures = new Set();
  let outputShown = false;

  // ------------------------------------------------------------------ helpers
  const $ = (selector) => document.querySelector(selector);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
  }

  function fmt(value) {
    if (value === null || value === undefined) return "–";
    if (typeof value !== "number") return String(value);
    if (value === 0) return "0";
    const a = Math.abs(value);
    if (a >= 1e6 || a < 1e-3) return value.toExponential(4).replace(/\.?0+e/, "e");
    return String(Number(value.toPrecision(6)));
  }

  function plural(n, word) { return `${n.toLocaleString()} ${word}${n === 1 ? "" : "s"}`; }

  function ago(iso) {
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return iso;
    const s = Math.max(0, (Date.now() + serverOffsetMs - t) / 1000);
    if (s < 60) return `${Math.round(s)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 2 * 86400) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} days ago`;
  }

  function duration(seconds) {
    if (seconds < 90) return `${Math.round(seconds)} s`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
    return `${(seconds / 3600).toFixed(1)} h`;
  }

  function localTime(iso) {
    const t = new Date(iso);
    return Number.isNaN(t.getTime()) ? iso : t.toLocaleString();
  }

  async function api(path) {
    const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    const data = await response.json();
    if (data.now) serverOffsetMs = Date.parse(data.now) - Date.now();
    return data;
  }

  // ------------------------------------------------------------ view <-> URL
  function readFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    view.fn = params.get("function") || "";
    view.status = params.get("status") || "";
    view.warnings = params.get("warnings") === "1";
    view.offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
    view.job = params.get("job") || "";
    view.args = {};
    for (const [key, value] of params) {
      if (key.startsWith("arg.")) (view.args[key.slice(4)] ||= []).push(value);
    }
  }

  function fragment() {
    const params = new URLSearchParams();
    if (view.fn) params.set("function", view.fn);
    if (view.status) params.set("status", view.status);
    if (view.warnings) params.set("warnings", "1");
    for (const [name, values] of Object.entries(view.args)) for (const v of values) params.append(`arg.${name}`, v);
    if (view.offset) params.set("offset", String(view.offset));
    if (view.job) params.set("job", view.job);
    return params.toString();
  }

  function change(changes) {
    if (changes.job !== undefined && changes.job !== view.job) forgetDetails();
    Object.assign(view, changes);
    const target = "#" + fragment();
    if (location.hash !== target && !(location.hash === "" && target === "#")) location.hash = target;
    else refresh(true);
  }

  function jobsQuery() {
    const params = new URLSearchParams();
    if (view.fn) params.set("function", view.fn);
    if (view.status) params.set("status", view.status);
    if (view.warnings) params.set("warnings", "1");
    for (const [name, values] of Object.entries(view.args)) for (const v of values) params.append(`arg.${name}`, v);
    params.set("offset", String(view.offset));
    params.set("limit", String(PAGE_SIZE));
    return params.toString();
  }

  function addArgFilter(name, value) {
    change({ args: { ...view.args, [name]: [value] }, offset: 0 });
  }

  function removeArgFilter(name) {
    const args = { ...view.args };
    delete args[name];
    change({ args, offset: 0 });
  }

  // -------------------------------------------------------------- functions
  function renderFunctions(data) {
    $("#db-path").textContent = data.path;
    $("#db-path").title = data.path;
    const list = $("#functions");
    const totals = data.functions.reduce(
      (t, f) => ({ active: t.active + f.active, warned: t.warned + f.with_warnings }), { active: 0, warned: 0 });
    if (changed(list, JSON.stringify([data.functions, data.total, view.fn]))) {
      const items = [functionItem("", "All jobs", "", data.total, totals.active, totals.warned)];
      for (const f of data.functions) {
        const module = f.function.slice(0, Math.max(0, f.function.length - f.name.length - 1));
        items.push(functionItem(f.function, f.name, module, f.jobs, f.active, f.with_warnings));
      }
      list.replaceChildren(...items);
    }

    const statuses = new Set(KNOWN_STATUSES.slice(0, 6));
    for (const f of data.functions) for (const s of Object.keys(f.statuses)) statuses.add(s);
    const select = $("#status-filter");
    if (changed(select, [...statuses].join())) {  // rebuilt only when needed: an open menu would close
      const options = [el("option", { value: "" }, "any")];
      for (const s of statuses) options.push(el("option", { value: s }, s.replace("_", " ")));
      select.replaceChildren(...options);
    }
    select.value = view.status;

    const banner = $("#problems");
    banner.hidden = data.problems.length === 0;
    if (data.problems.length) {
      banner.replaceChildren(
        el("strong", {}, `${plural(data.problems.length, "job folder")} cannot be read (left untouched):`),
        el("ul", {}, data.problems.slice(0, 10).map((p) => el("li", {}, el("code", {}, p.job_name), ": ", p.problem))),
      );
    }
  }

  function functionItem(fn, name, module, jobs, active, warned) {
    return el("li", {
      class: view.fn === fn ? "selected" : null, "data-function": fn, title: fn || "every function",
      onclick: () => change({ fn, args: {}, offset: 0 }),
    },
      el("span", { class: "fn-name" }, name),
      el("span", { class: "fn-count" }, jobs.toLocaleString()),
      module ? el("span", { class: "fn-module" }, module) : null,
      active || warned ? el("span", { class: "fn-badges" },
        active ? el("span", { class: "running" }, `${active} active`) : null,
        warned ? el("span", { class: "warned" }, `⚠ ${warned}`) : null) : null,
    );
  }

  // ------------------------------------------------------------------- jobs
  // Whether what a node shows must be redrawn; remembers the new content's key.
  function changed(node, key) {
    if (node.dataset.key === key) return false;
    node.dataset.key = key;
    return true;
  }

  function renderJobs(data) {
    const jobs = data.jobs;
    renderFacets(data.facets);
    renderChips();
    if (!changed($("#jobs"), JSON.stringify([jobs, view.fn, view.job, data.total, data.offset]))) {
      // Same jobs: only the times move on. Redrawing the rows would swallow a click in progress.
      for (const cell of document.querySelectorAll("#jobs td.when")) cell.textContent = ago(cell.dataset.at);
      return;
    }
    // Values that differ between the jobs shown are highlighted: they are what tells them apart.
    const seen = {};
    for (const job of jobs) for (const p of job.parameters) (seen[p] ||= new Set()).add(job.arguments[p]);
    const differs = new Set(Object.keys(seen).filter((p) => seen[p].size > 1));
    const columns = view.fn ? data.facets.map((f) => f.name) : null;

    const head = [el("th", {}, "#"), ...(columns ? columns.map((c) => el("th", { class: "mono" }, c)) : [el("th", {}, "call")]),
      el("th", {}, "status"), el("th", {}, "runs"), el("th", {}, "submitted"), el("th", {}, "warnings")];
    $("#jobs thead").replaceChildren(el("tr", {}, head));
    $("#jobs tbody").replaceChildren(...jobs.map((job) => jobRow(job, columns, differs)));

    const empty = $("#empty");
    empty.hidden = jobs.length > 0;
    if (!jobs.length) {
      empty.textContent = data.total === 0 && !view.fn && !view.status && !view.warnings && !Object.keys(view.args).length
        ? "No jobs in this database yet: call a function decorated with @parallel or @parallel_average to submit one."
        : "No job matches these filters.";
    }
    const last = Math.min(data.offset + jobs.length, data.total);
    $("#page-info").textContent = data.total ? `${(data.offset + 1).toLocaleString()}–${last.toLocaleString()} of ${plural(data.total, "job")}` : "";
    $("#prev").disabled = data.offset === 0;
    $("#next").disabled = last >= data.total;
  }

  function valueButton(name, value, differs, label) {
    return el("button", {
      type: "button", class: differs ? "value differs" : "value", "data-param": name, "data-value": value,
      title: `show only jobs with ${name} = ${value}`,
      onclick: (event) => { event.stopPropagation(); addArgFilter(name, value); },
    }, label === undefined ? value : label);
  }

  function jobRow(job, columns, differs) {
    const cells = [el("td", { class: "index" }, job.index)];
    if (columns) {
      for (const p of columns) {
        cells.push(el("td", { class: "param" },
          p in job.arguments ? valueButton(p, job.arguments[p], differs.has(p)) : ""));
      }
    } else {
      // Lines break only between arguments: each argument stays with its comma.
      const params = job.parameters;
      const pieces = params.map((p, i) => {
        const label = p.startsWith("*") ? `${p.startsWith("**") ? "**" : "*"}${job.arguments[p]}` : `${p}=${job.arguments[p]}`;
        return el("span", { class: "nowrap" }, i === 0 ? el("span", { class: "fcall" }, `${job.name}(`) : null,
          valueButton(p, job.arguments[p], differs.has(p), label),
          el("span", { class: "fcall" }, i === params.length - 1 ? ")" : ","));
      });
      if (!params.length) pieces.push(el("span", { class: "fcall" }, `${job.name}()`));
      cells.push(el("td", { class: "call" }, pieces.map((piece, i) => (i ? [" ", piece] : piece))));
    }
    cells.push(el("td", {}, statusBadge(job.status)));
    cells.push(el("td", {}, progress(job)));
    cells.push(el("td", { class: "when", title: localTime(job.submitted_at), "data-at": job.submitted_at }, ago(job.submitted_at)));
    cells.push(el("td", { class: "warnings" }, warnings(job)));
    return el("tr", {
      class: `job${view.job === job.job_name ? " selected" : ""}`, "data-job": job.job_name,
      onclick: () => change({ job: job.job_name }),
    }, cells);
  }

  function statusBadge(status) {
    return el("span", { class: `badge status-${status}` }, status.replace("_", " "));
  }

  function bar(done, failed, total, active, wide) {
    const node = el("span", { class: `bar${active ? " active" : ""}${wide ? " wide" : ""}` });
    const ok = el("span", { class: "ok" });
    const fail = el("span", { class: "fail" });
    ok.style.width = `${total ? (100 * done) / total : 0}%`;
    fail.style.width = `${total ? (100 * failed) / total : 0}%`;
    node.append(ok, fail);
    return node;
  }

  function progress(job) {
    const finished = job.n_successful + job.n_failed;
    const parts = [bar(job.n_successful, job.n_failed, job.total_runs, job.active),
      el("span", { class: "progress-text" }, `${finished.toLocaleString()}/${job.total_runs.toLocaleString()}`)];
    if (job.active && job.rate_per_s) {
      const eta = job.eta_s ? ` · ETA ${duration(job.eta_s)}` : "";
      parts.push(el("span", { class: "rate" }, `${fmt(job.rate_per_s)} runs/s${eta}`));
    }
    return el("span", { class: "progress" }, parts);
  }

  function warnings(job) {
    const parts = [];
    if (job.n_failed) parts.push(el("span", { class: "warn-failed", title: "runs that raised" }, `⚠ ${job.n_failed.toLocaleString()} failed`));
    if (job.n_not_ready && !job.active) {
      parts.push(el("span", { class: "warn-missing", title: "runs with no result although the job is no longer running; re_submit runs them" },
        `${job.n_not_ready.toLocaleString()} missing`));
    } else if (job.n_not_ready) {
      parts.push(el("span", { class: "not-ready" }, `${job.n_not_ready.toLocaleString()} not ready`));
    }
    return parts.length > 1 ? [parts[0], " ", parts[1]] : parts;
  }

  function renderFacets(facets) {
    const holder = $("#facets");
    if (!view.fn) { holder.replaceChildren(); holder.dataset.key = ""; return; }
    const shown = facets.filter((f) => f.distinct > 1 || view.args[f.name]).slice(0, MAX_FACETS);
    if (!changed(holder, JSON.stringify([shown, view.args]))) return;
    holder.replaceChildren(...shown.map((facet) => {
      const select = el("select", { "data-param": facet.name, onchange: (event) => {
        if (event.target.value === "") removeArgFilter(facet.name);
        else addArgFilter(facet.name, event.target.value);
      } }, el("option", { value: "" }, "any"),
      facet.values.map(([value, n]) => el("option", { value }, `${value}  (${n})`)));
      select.value = (view.args[facet.name] || [""])[0];
      return el("label", { class: "mono" }, facet.name, select);
    }));
  }

  function renderChips() {
    const names = Object.keys(view.args);
    $("#chips").replaceChildren(...names.map((name) => el("span", { class: "chip", "data-param": name },
      `${name} = ${view.args[name].join(" | ")}`,
      el("button", { type: "button", title: "remove this filter", onclick: () => removeArgFilter(name) }, "×"))));
    $("#clear-filters").hidden = !(names.length || view.status || view.warnings);
    $("#warnings-filter").checked = view.warnings;
    $("#status-filter").value = view.status;
  }

  // ---------------------------------------------------------------- details
  async function loadDetails(force) {
    const panel = $("#details");
    if (!view.job) { panel.hidden = true; panel.replaceChildren(); detailsKey = ""; return; }
    if (!force && !detailsActive) return;
    let data;
    try {
      data = await api(`api/jobs/${encodeURIComponent(view.job)}`);
    } catch (error) {
      if (error.status === undefined) throw error; // the viewer is unreachable: say so in the header
      panel.hidden = false;
      detailsKey = "";
      panel.replaceChildren(detailsHeader(view.job, null), el("p", { class: "problems" }, error.message));
      return;
    }
    const { now: _now, ...content } = data;
    const key = JSON.stringify(content);
    detailsActive = data.job.active || (data.state && data.state.status === "running");
    if (key === detailsKey && !force) return;
    detailsKey = key;
    renderDetails(data);
  }

  function forgetDetails() {
    outputShown = false;
    openFailures.clear();
    detailsKey = "";
    detailsActive = false;
  }

  function detailsHeader(name, status) {
    return el("h2", {}, name, status ? statusBadge(status) : null,
      el("button", { type: "button", class: "close", title: "close (Esc)", onclick: () => change({ job: "" }) }, "×"));
  }

  function renderDetails(data) {
    const panel = $("#details");
    const job = data.job;
    const record = data.record;
    const options = record.options || {};
    const st = data.state;
    const parts = [detailsHeader(job.job_name, st ? st.status : job.status), el("div", { class: "call" }, job.call)];

    const kv = [["function", job.function],
      ["runs", Array.isArray(job.N_runs) ? `${job.total_runs.toLocaleString()} (${job.N_runs.join(" × ")})` : job.total_runs.toLocaleString()]];
    if (options.N_tasks !== undefined) kv.push(["MPI ranks", options.N_tasks]);
    kv.push(["averaged", record.average_results === "keep" ? "no (outputs kept)" : record.average_results === "all" ? "yes" : `elements ${record.average_results.join(", ")}`]);
    kv.push(["queue", [job.queue || "–", job.queue_job_id ? ` · id ${job.queue_job_id}` : ""].join("")]);
    if (options.queue_options && Object.keys(options.queue_options).length) {
      kv.push(["queue options", Object.entries(options.queue_options).map(([k, v]) => `${k}=${v}`).join(", ")]);
    }
    if (options.seed !== undefined && options.seed !== null) kv.push(["seed", options.seed]);
    kv.push(["submitted", `${ago(job.submitted_at)} (${localTime(job.submitted_at)})`]);
    kv.push(["updated", `${ago(job.updated_at)} (${localTime(job.updated_at)})`]);
    kv.push(["folder", el("code", {}, data.directory)]);
    parts.push(el("dl", { class: "kv" }, kv.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])));

    if (st) {
      parts.push(el("h3", {}, "Runs"));
      parts.push(bar(st.successful, st.failed, st.total, st.status === "running", true));
      const count = (n, cls, word) => el("span", { class: n ? cls : "muted" }, `${n.toLocaleString()} ${word}`);
      parts.push(el("div", { class: "counts" },
        count(st.successful, "ok", "successful"),
        count(st.failed, "fail", "failed"),
        count(st.missing, st.status === "running" ? "muted" : "missing", st.status === "running" ? "not ready" : "missing"),
        el("span", { class: "muted" }, `of ${st.total.toLocaleString()}`)));
      if (st.status !== "running" && st.missing) {
        parts.push(el("p", { class: "problems" }, `The job is no longer running but ${plural(st.missing, "run")} have no result: run them with re_submit.`));
      }
      if (st.launches.length) {
        parts.push(el("p", { class: "muted" }, st.launches.map((l) =>
          `launch ${l.launch}: ${l.job_id !== null ? `queue job ${l.job_id}` : l.pid !== null ? `pid ${l.pid}` : l.backend || "?"}` +
          ` (${l.phase}${l.exit_code !== null ? `, exit code ${l.exit_code}` : ""})`).join(" · ")));
      }
    }
    if (data.problems.length) parts.push(el("ul", { class: "problems" }, data.problems.map((p) => el("li", {}, p))));
    if (st && st.fatal) {
      parts.push(el("h3", {}, "The runs could not start"));
      parts.push(el("pre", { class: "fatal" }, st.fatal));
    }
    if (data.failures.length) {
      parts.push(el("h3", {}, `Failed runs (${st.failed.toLocaleString()})`));
      data.failures.forEach((group, i) => {
        const runs = group.runs.map((r) => (Array.isArray(r) ? `(${r.join(", ")})` : r)).join(", ");
        const more = group.count > group.runs.length ? ", …" : "";
        const node = el("details", { class: "failure", open: openFailures.has(group.error) || (i === 0 && !openFailures.size) },
          el("summary", {}, group.error, " ", el("span", { class: "runs" }, `— ${plural(group.count, "run")}: ${runs}${more}`)),
          el("pre", { class: "traceback" }, group.traceback));
        node.addEventListener("toggle", () => {
          if (node.open) openFailures.add(group.error); else openFailures.delete(group.error);
        });
        parts.push(node);
      });
    }
    parts.push(el("h3", {}, "Result"));
    parts.push(resultView(job, data.result, data.problems));

    const outputButton = el("button", { type: "button", class: "link" }, outputShown ? "hide output" : "show output");
    const outputHolder = el("div", {});
    outputButton.addEventListener("click", () => {
      outputShown = !outputShown;
      outputButton.textContent = outputShown ? "hide output" : "show output";
      showOutput(job.job_name, outputHolder);
    });
    parts.push(el("h3", {}, "Standard output and error"), outputButton, outputHolder);
    if (outputShown) showOutput(job.job_name, outputHolder);

    const scroll = panel.scrollTop;
    panel.replaceChildren(...parts);
    panel.hidden = false;
    panel.scrollTop = scroll;
  }

  async function showOutput(name, holder) {
    if (!outputShown) { holder.replaceChildren(); return; }
    const response = await fetch(`api/jobs/${encodeURIComponent(name)}/output`, { credentials: "same-origin", cache: "no-store" });
    const text = response.ok ? await response.text() : `cannot read the output: ${response.status}`;
    holder.replaceChildren(el("pre", { class: "output" }, text || "(empty)"));
  }

  // ``result`` has the keys of ``show --json`` (docs/cli.md), with a ``series`` per 1-D average.
  function resultView(job, result, problems) {
    if (!result) {
      return el("p", { class: "muted" }, problems.length ? "No result could be read (see the problems above)." : "No run has finished yet.");
    }
    if (result.kind === "outputs") {
      return el("p", {}, `The outputs of ${plural(result.runs, "run")} are kept, not averaged. In Python: `,
        el("code", {}, `load_job("${job.job_name}")`), " returns them by run id.");
    }
    return el("div", {}, result.elements.map((element) => {
      const title = result.tuple ? el("h4", {}, `element ${element.index}`) : null;
      if (!element.averaged) return el("div", {}, title, el("p", {}, "not averaged, from the last run: ", el("code", {}, element.text)));
      const body = [title];
      if (element.shape.length === 0) {
        body.push(el("table", { class: "scalars" },
          el("tr", {}, el("th", {}, "mean ± error"), el("td", { class: "mean" }, `${fmt(element.mean)} ± ${fmt(element.error)}`)),
          el("tr", {}, el("th", {}, "variance"), el("td", {}, fmt(element.variance))),
          el("tr", {}, el("th", {}, "runs averaged"), el("td", {}, element.count.toLocaleString()))));
      } else if (element.series) {
        body.push(plot(element.series));
        body.push(el("p", { class: "muted" }, `mean ± estimated error over ${plural(element.count, "run")}, ${element.shape[0].toLocaleString()} points` +
          (element.series.step > 1 ? ` (every ${element.series.step}th shown; the downloads have all)` : "")));
      } else {
        body.push(el("p", {}, `An array of shape (${element.shape.join(", ")}), ${element.type}, averaged over ${plural(element.count, "run")}` +
          (element.min !== null ? `; mean from ${fmt(element.min)} to ${fmt(element.max)}.` : ".")));
      }
      const stats = element.statistics || {};
      if (stats.histogram) body.push(histogramPlot(stats.histogram));
      const rows = statisticRows(stats);
      if (rows.length) body.push(el("table", { class: "scalars statistics" }, ...rows));
      const base = `api/jobs/${encodeURIComponent(job.job_name)}`;
      const suffix = element.index ? `-${element.index}` : "";
      body.push(el("div", { class: "downloads" }, "download:",
        el("a", { href: `${base}/data.npz?element=${element.index}`, download: `${job.job_name}${suffix}.npz` }, ".npz (numpy)"),
        el("a", { href: `${base}/data.csv?element=${element.index}`, download: `${job.job_name}${suffix}.csv` }, "CSV")));
      return el("div", { class: "element" }, body);
    }));
  }

  // The statistics= of an element that are numbers (a scalar output's): one row each.
  function statisticRows(stats) {
    const rows = [];
    const row = (name, value) => rows.push(el("tr", {}, el("th", {}, name), el("td", {}, value)));
    const number = (v) => typeof v === "number";
    if (stats.moments && number(stats.moments.skewness)) row("skewness", fmt(stats.moments.skewness));
    if (stats.moments && number(stats.moments.excess_kurtosis)) row("excess kurtosis", fmt(stats.moments.excess_kurtosis));
    if (stats.autocorrelation && number(stats.autocorrelation.autocorrelation_time)) {
      const a = stats.autocorrelation;
      row("autocorrelation time", `${fmt(a.autocorrelation_time)} samples${a.converged ? "" : " (no plateau: the runs' error)"}`);
      row("mean error, corrected", `${fmt(a.error)} (naive ${fmt(a.naive_error)})`);
    }
    if (stats.jackknife) row("jackknife batches", `${stats.jackknife.batches} (in Python: result.jackknife(f))`);
    if (stats.covariance && Array.isArray(stats.covariance.correlation)) row("correlation", `${stats.covariance.correlation.length} × ${stats.covariance.correlation.length} (in Python: result.correlation)`);
    return rows;
  }

  // A histogram of statistics= as bars over its bins, with sqrt(n) (or sqrt(sum w²)) ticks.
  function histogramPlot(h) {
    const W = 640, H = 240, m = { l: 64, r: 14, t: 10, b: 42 };
    const values = h.weights || h.counts;
    const edges = h.edges;
    const n = values.length;
    let hi = 0;
    for (const v of values) if (v !== null) hi = Math.max(hi, v);
    if (hi === 0) hi = 1;
    hi *= 1.08;
    const x0 = edges[0], x1 = edges[n];
    const px = (v) => m.l + ((v - x0) / (x1 - x0)) * (W - m.l - m.r);
    const py = (v) => H - m.b - (v / hi) * (H - m.t - m.b);
    const r = (v) => v.toFixed(2);
    const root = svg("svg", { class: "plot histogram", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "histogram" });
    for (const t of niceTicks(0, hi, 4)) {
      root.append(svg("line", { class: "grid", x1: m.l, x2: W - m.r, y1: r(py(t)), y2: r(py(t)) }),
        svg("text", { x: m.l - 7, y: r(py(t) + 5), "text-anchor": "end" }, fmt(t)));
    }
    for (const t of niceTicks(x0, x1, 6)) {
      if (t < x0 || t > x1) continue;
      root.append(svg("text", { x: r(px(t)), y: H - m.b + 18, "text-anchor": "middle" }, fmt(t)));
    }
    for (let i = 0; i < n; i++) {
      if (values[i] === null || values[i] <= 0) continue;
      root.append(svg("rect", { class: "hist-bar", x: r(px(edges[i])), y: r(py(values[i])),
        width: r(Math.max(px(edges[i + 1]) - px(edges[i]) - 1, 0.5)), height: r(py(0) - py(values[i])) }));
    }
    root.append(svg("line", { class: "axis", x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }),
      svg("line", { class: "axis", x1: m.l, x2: m.l, y1: m.t, y2: H - m.b }),
      svg("text", { x: (m.l + W - m.r) / 2, y: H - 4, "text-anchor": "middle" }, h.weights ? "value (weight per bin)" : "value (runs per bin)"));
    const outside = [h.underflow && `${h.underflow} below`, h.overflow && `${h.overflow} above`, h.nan && `${h.nan} NaN`].filter(Boolean);
    const note = `histogram of ${plural(h.count, "run")}${h.summed_over_elements ? ", every element's added up" : ""}` +
      (outside.length ? `; outside the range: ${outside.join(", ")}` : "");
    return el("div", { class: "plot-holder" }, root, el("p", { class: "muted" }, note));
  }

  // ------------------------------------------------------------------- plot
  function niceTicks(lo, hi, count) {
    const span = hi - lo;
    const raw = span / count;
    const magnitude = 10 ** Math.floor(Math.log10(raw));
    const norm = raw / magnitude;
    const step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * magnitude;
    const ticks = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
    return ticks;
  }

  // Contiguous runs of indices whose values are all finite (null marks nan or inf).
  function segments(n, ok) {
    const out = [];
    let start = -1;
    for (let i = 0; i <= n; i++) {
      if (i < n && ok(i)) { if (start < 0) start = i; } else if (start >= 0) { out.push([start, i]); start = -1; }
    }
    return out;
  }

  function plot(series) {
    const W = 640, H = 300, m = { l: 64, r: 14, t: 10, b: 42 };
    const { x, mean, error } = series;
    const n = x.length;
    const err = (i) => (error[i] === null ? 0 : error[i]);
    let lo = Infinity, hi = -Infinity;
    for (let i = 0; i < n; i++) {
      if (mean[i] === null) continue;
      lo = Math.min(lo, mean[i] - err(i));
      hi = Math.max(hi, mean[i] + err(i));
    }
    if (!Number.isFinite(lo)) { lo = -1; hi = 1; }
    if (lo === hi) { const pad = Math.abs(lo) * 0.1 || 1; lo -= pad; hi += pad; }
    const padY = (hi - lo) * 0.05; lo -= padY; hi += padY;
    let x0 = x[0], x1 = x[n - 1];
    if (x0 === x1) { x0 -= 0.5; x1 += 0.5; }
    const px = (v) => m.l + ((v - x0) / (x1 - x0)) * (W - m.l - m.r);
    const py = (v) => H - m.b - ((v - lo) / (hi - lo)) * (H - m.t - m.b);
    const r = (v) => v.toFixed(2);

    const root = svg("svg", { class: "plot", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "mean with its error band" });
    for (const t of niceTicks(lo, hi, 5)) {
      root.append(svg("line", { class: "grid", x1: m.l, x2: W - m.r, y1: r(py(t)), y2: r(py(t)) }),
        svg("text", { x: m.l - 7, y: r(py(t) + 5), "text-anchor": "end" }, fmt(t)));
    }
    for (const t of niceTicks(x0, x1, 6)) {
      if (t < x0 || t > x1) continue;
      root.append(svg("line", { class: "grid", x1: r(px(t)), x2: r(px(t)), y1: m.t, y2: H - m.b }),
        svg("text", { x: r(px(t)), y: H - m.b + 18, "text-anchor": "middle" }, fmt(t)));
    }
    root.append(svg("line", { class: "axis", x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }),
      svg("line", { class: "axis", x1: m.l, x2: m.l, y1: m.t, y2: H - m.b }),
      svg("text", { x: (m.l + W - m.r) / 2, y: H - 4, "text-anchor": "middle" }, "index"));

    const pieces = segments(n, (i) => mean[i] !== null);
    let band = "", line = "";
    for (const [a, b] of pieces) {
      let upper = "", lower = "";
      for (let i = a; i < b; i++) upper += `${i === a ? "M" : "L"}${r(px(x[i]))},${r(py(mean[i] + err(i)))}`;
      for (let i = b - 1; i >= a; i--) lower += `L${r(px(x[i]))},${r(py(mean[i] - err(i)))}`;
      band += `${upper}${lower}Z`;
      for (let i = a; i < b; i++) line += `${i === a ? "M" : "L"}${r(px(x[i]))},${r(py(mean[i]))}`;
    }
    root.append(svg("path", { class: "band", d: band }), svg("path", { class: "mean", d: line }));
    if (n <= 60) {
      for (let i = 0; i < n; i++) if (mean[i] !== null) root.append(svg("circle", { class: "point", cx: r(px(x[i])), cy: r(py(mean[i])), r: 2.4 }));
    }

    // Hovering reads off the nearest point.
    const readout = el("div", { class: "plot-readout" }, " ");
    const cursor = svg("line", { class: "cursor", x1: 0, x2: 0, y1: m.t, y2: H - m.b, visibility: "hidden" });
    const overlay = svg("rect", { class: "overlay", x: m.l, y: m.t, width: W - m.l - m.r, height: H - m.t - m.b });
    overlay.addEventListener("mousemove", (event) => {
      const box = root.getBoundingClientRect();
      const sx = ((event.clientX - box.left) / box.width) * W;
      const v = x0 + ((sx - m.l) / (W - m.l - m.r)) * (x1 - x0);
      let best = 0;
      for (let i = 1; i < n; i++) if (Math.abs(x[i] - v) < Math.abs(x[best] - v)) best = i;
      cursor.setAttribute("x1", r(px(x[best])));
      cursor.setAttribute("x2", r(px(x[best])));
      cursor.setAttribute("visibility", "visible");
      readout.textContent = `index ${x[best]}: ${fmt(mean[best])} ± ${fmt(error[best])}`;
    });
    overlay.addEventListener("mouseleave", () => { cursor.setAttribute("visibility", "hidden"); readout.textContent = " "; });
    root.append(cursor, overlay);
    return el("div", { class: "plot-holder" }, root, readout);
  }

  // ---------------------------------------------------------------- polling
  function setLoading(progress) {
    const node = $("#connection");
    node.className = "connection";
    node.textContent = `reading job records… ${progress.read.toLocaleString()} of ${progress.of.toLocaleString()}`;
  }

  function setConnection(ok, message) {
    const node = $("#connection");
    node.className = ok ? "connection live" : "connection down";
    node.textContent = ok ? `live · updated ${new Date().toLocaleTimeString()}` : message;
  }

  let latest = 0; // answers to an older request (filters since changed) are dropped

  async function refresh(force) {
    if (inFlight && !force) return;
    inFlight = true;
    const mine = ++latest;
    try {
      // Each part is drawn as soon as it arrives: the newest jobs come first while the
      // viewer still reads the records of a large database; the function counts need them all.
      let loading = null;
      await Promise.all([
        api(`api/jobs?${jobsQuery()}`).then((jobs) => {
          if (mine !== latest) return;
          renderJobs(jobs);
          loading = jobs.loading || null;
          if (loading) setLoading(loading);
        }),
        api("api/functions").then((functions) => { if (mine === latest) renderFunctions(functions); }),
        loadDetails(force),
      ]);
      if (mine === latest) {
        if (loading) setTimeout(() => refresh(true), 300);
        else setConnection(true);
      }
    } catch (error) {
      if (mine === latest) {
        setConnection(false, error.status === 403
          ? "access refused: was the viewer restarted? Open the new URL it printed, with its token"
          : `viewer not reachable (${error.message}); is it still running?`);
      }
    } finally {
      if (mine === latest) inFlight = false;
    }
  }

  function start() {
    // The token is now in a cookie: take it out of the address bar (and of screenshots).
    if (new URLSearchParams(location.search).has("token")) history.replaceState(null, "", location.pathname + location.hash);
    readFragment();
    $("#status-filter").addEventListener("change", (event) => change({ status: event.target.value, offset: 0 }));
    $("#warnings-filter").addEventListener("change", (event) => change({ warnings: event.target.checked, offset: 0 }));
    $("#clear-filters").addEventListener("click", () => change({ args: {}, status: "", warnings: false, offset: 0 }));
    $("#prev").addEventListener("click", () => change({ offset: Math.max(0, view.offset - PAGE_SIZE) }));
    $("#next").addEventListener("click", () => change({ offset: view.offset + PAGE_SIZE }));
    document.addEventListener("keydown", (event) => { if (event.key === "Escape" && view.job) change({ job: "" }); });
    window.addEventListener("hashchange", () => {
      const job = view.job;
      readFragment();
      if (view.job !== job) forgetDetails();
      refresh(true);
    });
    refresh(true);
    setInterval(() => { if (!document.hidden) refresh(false); }, POLL_MS);
  }

  start();
})();
