// agentledger console: live refresh of marked regions, step detail, payload JSON validation.
"use strict";
(function () {
  const base = document.body.dataset.base || "";
  let selected = null;
  const last = new WeakMap();

  // A region with data-live is re-rendered from its fragment URL every 2 s, unless the
  // person is typing in a form inside it.
  function busy(region) {
    const active = document.activeElement;
    if (active && region.contains(active) && active.closest("form")) return true;
    const now = Date.now();
    return Array.from(region.querySelectorAll("form")).some(
      f => f.dataset.dirty || now - Number(f.dataset.touched || 0) < 30000);
  }
  function refresh(region) {
    if (document.hidden || busy(region)) return;
    fetch(region.dataset.live, {credentials: "same-origin"}).then(r => r.ok ? r.text() : null)
      .then(html => {
        // Replace only what changed: an element being clicked stays in place.
        if (html === null || busy(region) || html === last.get(region)) return;
        last.set(region, html);
        region.innerHTML = html;
        wire(region);
        if (selected) mark(selected);
      }).catch(() => {});
  }
  document.querySelectorAll("[data-live]").forEach(region => {
    setInterval(() => refresh(region), 2000);
  });

  // ---- JSON viewer: collapsible, big strings and lists cut with a "show all" button --------
  const CUT = 300, ITEMS = 50;
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function view(value, depth) {
    if (value === null || typeof value !== "object") {
      const text = JSON.stringify(value);
      const span = el("span", typeof value === "string" ? "s" : "n");
      if (text !== undefined && text.length > CUT) {
        span.textContent = text.slice(0, CUT) + "…";
        const more = el("button", "more", `show all (${text.length} chars)`);
        more.type = "button";
        more.addEventListener("click", () => { span.textContent = text; more.remove(); });
        const wrap = el("span"); wrap.append(span, more); return wrap;
      }
      span.textContent = text === undefined ? "undefined" : text;
      return span;
    }
    const isList = Array.isArray(value);
    const entries = isList ? value.map((v, i) => [i, v]) : Object.entries(value);
    if (!entries.length) return el("span", "n", isList ? "[]" : "{}");
    const box = el("details");
    box.open = depth < 2 && entries.length <= 20;
    box.append(el("summary", null, isList ? `[${entries.length} items]` : `{${entries.length} keys}`));
    const shown = entries.slice(0, ITEMS);
    function add(list) {
      list.forEach(([k, v]) => {
        const row = el("div");
        row.append(el("span", "k", isList ? `${k}: ` : `${JSON.stringify(k)}: `), view(v, depth + 1));
        box.append(row);
      });
    }
    add(shown);
    if (entries.length > ITEMS) {
      const more = el("button", "more", `show all ${entries.length}`);
      more.type = "button";
      more.addEventListener("click", () => { more.remove(); add(entries.slice(ITEMS)); });
      box.append(more);
    }
    return box;
  }

  // ---- step detail ---------------------------------------------------------------------------
  function mark(key) {
    document.querySelectorAll("[data-step].selected").forEach(e => e.classList.remove("selected"));
    document.querySelectorAll("[data-step]").forEach(e => {
      if (e.dataset.step === key && !e.classList.contains("pending")) e.classList.add("selected");
    });
  }
  function show(key) {
    const region = document.getElementById("run-live");
    if (!region) return;
    selected = key;
    mark(key);
    const url = `${base}/api/step?run=${encodeURIComponent(region.dataset.run)}&key=${encodeURIComponent(key)}`;
    fetch(url, {credentials: "same-origin"}).then(r => r.json()).then(d => {
      const panel = document.getElementById("detail");
      panel.classList.remove("hidden");
      document.getElementById("detail-title").textContent = `#${d.seq} ${d.kind} ${d.name}`;
      const body = document.getElementById("detail-body");
      body.replaceChildren();
      const kv = el("dl", "kv");
      const facts = [["step key", d.key], ["state", d.state], ["scope", d.scope || "-"],
        ["attempts", d.attempts], ["replayed", `${d.replays}×`], ["idempotency key", d.idempotency_key || "-"],
        ["fingerprint", d.fingerprint || "-"], ["in-doubt policy", d.in_doubt_policy],
        ["executed by", d.executor || "- (not recorded)"], ["executed under fence", d.executor_fence], ["run's executor now", d.run_owner || "-"],
        ["started", d.started ? new Date(d.started).toISOString() : "-"],
        ["ended", d.ended ? new Date(d.ended).toISOString() : "-"],
        ["duration", d.duration_ms === null ? "-" : `${d.duration_ms} ms`]];
      facts.forEach(([k, v]) => { kv.append(el("dt", null, k), el("dd", null, String(v))); });
      body.append(kv);
      [["inputs", d.inputs], ["approval request", d.request], ["result", d.result],
       ["error (last attempt)", d.error], ["conflict", d.conflict],
       ["earlier attempts", d.earlier_attempts && d.earlier_attempts.length ? d.earlier_attempts : null]].forEach(([name, value]) => {
        if (value === null || value === undefined) return;
        const sec = el("div", "json " + name.split(" ")[0]);
        sec.append(el("h3", null, name), view(value, 0));
        body.append(sec);
      });
    });
  }

  // ---- forms: the edited payload must be JSON before it is sent --------------------------------
  function wire(root) {
    root.querySelectorAll("[data-step]:not(.pending)").forEach(e => {
      e.addEventListener("click", () => show(e.dataset.step));
      e.addEventListener("keydown", ev => { if (ev.key === "Enter") show(e.dataset.step); });
    });
    root.querySelectorAll("form.decide").forEach(form => {
      form.addEventListener("input", () => { form.dataset.dirty = "1"; });
      // A person who opened or focused part of the form is about to use it: hold the refresh.
      form.addEventListener("focusin", () => { form.dataset.touched = String(Date.now()); });
      form.addEventListener("click", () => { form.dataset.touched = String(Date.now()); });
      form.addEventListener("submit", ev => {
        const button = ev.submitter;
        const area = form.querySelector("textarea[name=payload]");
        const out = form.querySelector(".json-error");
        out.textContent = "";
        if (button && button.value === "approve-edited") {
          try { JSON.parse(area.value); } catch (err) {
            ev.preventDefault();
            form.querySelector("details").open = true;
            out.textContent = "not JSON: " + err.message;
          }
        }
      });
    });
  }
  wire(document);
})();
