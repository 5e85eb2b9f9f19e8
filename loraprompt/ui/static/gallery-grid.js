// loraprompt gallery, part 2 of 5: the Gallery class: toolbar, data loading and polling, folder tree,
// sort and filter, the virtualised card grid, keyboard and inserting a card's tag. Every string from
// the library is put in the page with textContent (never innerHTML).
(function () {
  "use strict";
  const LP = window.LoraPromptGalleryParts;
  if (!LP || LP.Gallery) return;
  const { CARD_W, CARD_H, GAP, OVERSCAN_ROWS, FAMILY_LABEL, el, findField, setField, fmtSize, SearchIndex } = LP;
  const FIRST_PAGE = 300; // cards asked for first: more than a screen holds

  class Gallery {
    constructor(root) {
      this.root = root;
      this.api = root.dataset.api.replace(/\/$/, "");
      this.targets = JSON.parse(root.dataset.targets || "[]");
      this.cards = [];
      this.total = 0;
      this.sorted = [];
      this.collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
      this.byId = new Map();
      this.view = [];
      this.hiddenByFamily = 0;
      this.family = null;
      this.generation = null;
      this.usageStamp = null;
      this.strengths = new Map();
      this.nodes = new Map();
      this.cursor = 0;
      this.folder = "";
      this.showAll = false;
      let saved = {};
      try {
        saved = JSON.parse(localStorage.getItem("loraprompt.gallery.sort") || "{}") || {};
      } catch (err) { /* another script's value, or a hand edit: default sort */ }
      this.sortKey = saved.key || "name";
      this.sortDesc = !!saved.desc;
      this.build();
      this.load();
      this.poll = setInterval(() => this.checkState(), Number(root.dataset.poll) || 4000);
    }

    url(path, params) {
      const q = params ? "?" + new URLSearchParams(params).toString() : "";
      return this.api + "/" + path + q;
    }

    async request(path, body) {
      const init = body === undefined ? {} : {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-LoraPrompt": "1" },
        body: JSON.stringify(body),
      };
      const r = await fetch(this.url(path), init);
      const data = await r.json().catch(() => ({}));
      if (!r.ok) throw new Error(data.detail || r.status + " " + r.statusText);
      return data;
    }

    build() {
      const r = this.root;
      r.textContent = "";
      const bar = el("div", "lp-toolbar");
      this.search = el("input", "lp-search");
      this.search.type = "search";
      this.search.placeholder = "Search names, tags, trigger words, notes (press /)";
      this.search.setAttribute("aria-label", "Search LoRAs");
      this.sortSel = el("select", "lp-sort");
      for (const [v, label] of [["name", "Name"], ["date", "Date"], ["size", "Size"], ["favorite", "Favorites first"],
        ["uses", "Most used"], ["recent", "Last used"]]) {
        const o = el("option", null, label);
        o.value = v;
        this.sortSel.appendChild(o);
      }
      this.sortSel.value = this.sortKey;
      this.sortSel.title = "Sort by";
      this.orderBtn = el("button", "lp-btn lp-order");
      this.orderBtn.type = "button";
      this.actLabel = el("label", "lp-check");
      this.actBox = el("input");
      this.actBox.type = "checkbox";
      this.actBox.checked = true;
      this.actLabel.append(this.actBox, document.createTextNode(" activation text"));
      this.actLabel.title = "Insert the activation text with the tag (Shift inverts)";
      this.targetSel = el("select", "lp-target");
      this.targets.forEach((t, i) => {
        const o = el("option", null, t.label);
        o.value = String(i);
        this.targetSel.appendChild(o);
      });
      this.targetSel.hidden = this.targets.length < 2;
      this.count = el("span", "lp-count");
      this.filterNote = el("span", "lp-filter-note");
      this.filterBtn = el("button", "lp-btn lp-filter-toggle");
      this.filterBtn.type = "button";
      this.refreshBtn = el("button", "lp-btn lp-refresh", "⟳ Refresh");
      this.refreshBtn.type = "button";
      this.refreshBtn.title = "Rescan the LoRA folders";
      this.dupBtn = el("button", "lp-btn lp-dup-toggle");
      this.dupBtn.type = "button";
      this.dupBtn.hidden = true;
      this.dupNote = el("span", "lp-dup-note");
      bar.append(this.search, this.sortSel, this.orderBtn, this.actLabel, this.targetSel, this.count,
        this.filterNote, this.filterBtn, this.dupBtn, this.dupNote, this.refreshBtn);
      this.status = el("div", "lp-status");
      this.status.setAttribute("role", "status");
      const body = el("div", "lp-body");
      this.tree = el("nav", "lp-tree");
      this.tree.setAttribute("aria-label", "Folders");
      this.scroller = el("div", "lp-scroller");
      this.scroller.tabIndex = 0;
      this.scroller.setAttribute("role", "listbox");
      this.scroller.setAttribute("aria-label", "LoRA cards");
      this.spacer = el("div", "lp-spacer");
      this.scroller.appendChild(this.spacer);
      body.append(this.tree, this.scroller);
      this.dialog = el("dialog", "lp-dialog");
      r.append(bar, this.status, body, this.dialog);

      this.search.addEventListener("input", () => { this.cursor = 0; this.applyFilter(); });
      this.search.addEventListener("keydown", (e) => {
        if (e.key === "Enter") { e.preventDefault(); this.insertAt(this.cursor, e.shiftKey); }
        if (e.key === "ArrowDown") { e.preventDefault(); this.scroller.focus(); this.moveCursor(0); }
      });
      this.sortSel.addEventListener("change", () => { this.sortKey = this.sortSel.value; this.saveSort(); });
      this.orderBtn.addEventListener("click", () => { this.sortDesc = !this.sortDesc; this.saveSort(); });
      this.filterBtn.addEventListener("click", () => { this.showAll = !this.showAll; this.applyFilter(); });
      this.refreshBtn.addEventListener("click", () => this.refresh());
      this.scroller.addEventListener("scroll", () => this.renderWindow());
      this.scroller.addEventListener("keydown", (e) => this.onGridKey(e));
      new ResizeObserver(() => this.layout()).observe(this.scroller);
      this.updateOrderButton();
    }

    saveSort() {
      localStorage.setItem("loraprompt.gallery.sort", JSON.stringify({ key: this.sortKey, desc: this.sortDesc }));
      this.updateOrderButton();
      this.sortCards();
      this.applyFilter();
    }

    updateOrderButton() {
      this.orderBtn.textContent = this.sortDesc ? "↓" : "↑";
      this.orderBtn.title = this.sortDesc ? "Descending" : "Ascending";
    }

    say(text, isError) {
      this.status.textContent = text || "";
      this.status.classList.toggle("lp-error", !!isError);
    }

    async load() {
      try {
        if (!this.cards.length) {
          // a big library: draw the first cards (in this page's sort) while the rest are made and sent
          const params = new URLSearchParams({ limit: String(FIRST_PAGE), sort: this.sortKey, desc: String(this.sortDesc) });
          const first = await this.request("cards?" + params.toString());
          if (!this.cards.length) this.setData(first);
          if (!first.partial) { setTimeout(() => this.checkState(), 0); return; }
          this.say("Showing the first " + first.cards.length + " of " + first.total + " LoRAs; loading the rest…");
        }
        const data = await this.request("cards");
        this.setData(data);
        setTimeout(() => this.checkState(), 0); // starts the server's background hashing now
      } catch (err) {
        this.say("Could not load the LoRA list: " + err.message, true);
      }
    }

    setData(data) {
      this.cards = data.cards;
      this.total = data.partial ? data.total : data.cards.length; // the library's, while the rest loads
      this.family = data.family;
      this.generation = data.generation;
      this.byId = new Map();
      this.cards.forEach((c, i) => { c.ix = i; this.byId.set(c.id, c); });
      this.index = null;
      this.searchIndex();
      this.setUsage(data.usage || {}, data.usage_stamp);
      this.sortCards();
      for (const c of this.cards) {
        if (!this.strengths.has(c.id)) this.strengths.set(c.id, { te: c.weight, unet: c.weight });
      }
      this.buildTree();
      this.applyFilter();
      this.say(data.notice || "");
    }

    async checkState() {
      if (!this.root.isConnected) { clearInterval(this.poll); return; }
      if (this.root.offsetParent === null) return;
      try {
        const s = await this.request("state");
        if (s.generation !== this.generation) { await this.load(); return; }
        if (s.usage_stamp !== this.usageStamp) await this.loadUsage();
        if (s.family !== this.family) { this.family = s.family; this.applyFilter(); }
        if (this.checkDuplicates) await this.checkDuplicates(s);
      } catch (err) { /* the server is restarting; the next poll retries */ }
    }

    setUsage(usage, stamp) {
      // card id -> [times used, last use in ms]: generations made with each LoRA
      for (const c of this.cards) {
        const u = usage[c.id];
        c.uses = u ? u[0] : 0;
        c.last_used = u ? u[1] : 0;
      }
      this.usageStamp = stamp;
    }

    async loadUsage() {
      const data = await this.request("usage");
      this.setUsage(data.usage, data.stamp);
      this.sortCards();
      this.applyFilter();
    }

    async refresh() {
      this.refreshBtn.disabled = true;
      this.say("Rescanning…");
      try {
        this.setData(await this.request("refresh", {}));
      } catch (err) {
        this.say("Refresh failed: " + err.message, true);
      } finally {
        this.refreshBtn.disabled = false;
      }
    }

    buildTree() {
      const counts = new Map();
      for (const c of this.cards) {
        const parts = c.folder ? c.folder.split("/") : [];
        for (let i = 0; i <= parts.length; i++) {
          const key = parts.slice(0, i).join("/");
          counts.set(key, (counts.get(key) || 0) + 1);
        }
      }
      if (!counts.has(this.folder)) this.folder = "";
      const keys = [...counts.keys()].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
      this.tree.textContent = "";
      const list = el("ul", "lp-tree-list");
      for (const key of keys) {
        const depth = key ? key.split("/").length : 0;
        const item = el("li");
        const btn = el("button", "lp-folder", key ? key.split("/").pop() : "All");
        btn.type = "button";
        btn.style.paddingLeft = (4 + depth * 12) + "px";
        btn.dataset.folder = key;
        btn.title = key || "All folders";
        btn.appendChild(el("span", "lp-folder-count", counts.get(key)));
        btn.classList.toggle("lp-selected", key === this.folder);
        btn.addEventListener("click", () => {
          this.folder = key;
          for (const b of this.tree.querySelectorAll(".lp-folder")) b.classList.toggle("lp-selected", b === btn);
          this.cursor = 0;
          this.applyFilter();
        });
        item.appendChild(btn);
        list.appendChild(item);
      }
      this.tree.appendChild(list);
      this.tree.hidden = keys.length < 2;
    }

    sortCards() {
      const key = this.sortKey, sign = this.sortDesc ? -1 : 1, collator = this.collator;
      const byName = (a, b) => collator.compare(a.name, b.name);
      const cmp = key === "date" ? (a, b) => a.mtime - b.mtime
        : key === "size" ? (a, b) => a.size - b.size
          : key === "favorite" ? (a, b) => (b.favorite - a.favorite) * sign || byName(a, b)
            : key === "uses" ? (a, b) => b.uses - a.uses || b.last_used - a.last_used || byName(a, b)
              : key === "recent" ? (a, b) => b.last_used - a.last_used || byName(a, b)
                : byName;
      this.sorted = this.cards.slice().sort((a, b) => sign * cmp(a, b) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
      this.rank = new Int32Array(this.cards.length); // card index -> place in `sorted`
      this.sorted.forEach((c, r) => { this.rank[c.ix] = r; });
    }

    searchIndex() {
      if (!this.index) this.index = new SearchIndex(this.cards.map((c) => c.search));
      return this.index;
    }

    matching(terms) { // the cards holding every search term, in the page's sort
      const found = this.searchIndex().find(terms), cards = this.cards, rank = this.rank;
      if (found.length * 16 < cards.length) return found.sort((a, b) => rank[a] - rank[b]).map((i) => cards[i]);
      const hit = new Uint8Array(cards.length);
      for (const i of found) hit[i] = 1;
      return this.sorted.filter((c) => hit[c.ix]);
    }

    applyFilter() {
      const terms = this.search.value.toLowerCase().split(/\s+/).filter(Boolean);
      const folder = this.folder, prefix = folder ? folder + "/" : "", family = this.family, showAll = this.showAll;
      const misfit = (c) => !!(family && c.family && c.family !== family);
      const base = this.unsearched; // the view without a search, kept: clearing the search box is instant
      let view, hidden;
      if (!terms.length && base && base.sorted === this.sorted && base.folder === folder && base.family === family
        && base.showAll === showAll) {
        ({ view, hidden } = base);
      } else {
        view = [];
        hidden = 0;
        for (const c of terms.length ? this.matching(terms) : this.sorted) {
          if (folder && c.folder !== folder && !c.folder.startsWith(prefix)) continue;
          if (family && c.family && c.family !== family) { hidden++; if (!showAll) continue; }
          view.push(c);
        }
        if (!terms.length) this.unsearched = { sorted: this.sorted, folder, family, showAll, view, hidden };
      }
      if (this.dupMode && this.onlyDuplicates) view = this.onlyDuplicates(view);
      this.hiddenByFamily = hidden;
      this.view = view;
      this.misfit = misfit;
      this.cursor = Math.min(this.cursor, Math.max(0, view.length - 1));
      this.count.textContent = view.length + " of " + this.total;
      this.updateFilterNote();
      this.layout();
    }

    updateFilterNote() {
      const label = FAMILY_LABEL[this.family] || this.family;
      const n = this.hiddenByFamily;
      const plural = n === 1 ? "" : "s";
      if (!n) {
        this.filterNote.textContent = this.family ? "Loaded model: " + label : "";
        this.filterBtn.hidden = true;
      } else if (this.showAll) {
        this.filterNote.textContent = "Showing " + n + " card" + plural + " that do not fit " + label;
        this.filterBtn.textContent = "Hide them";
        this.filterBtn.hidden = false;
      } else {
        this.filterNote.textContent = n + " hidden by the " + label + " filter";
        this.filterBtn.textContent = "Show them";
        this.filterBtn.hidden = false;
      }
    }

    layout() {
      const width = this.scroller.clientWidth || 800;
      this.cols = Math.max(1, Math.floor((width - GAP) / (CARD_W + GAP)));
      this.cardW = Math.max(CARD_W, Math.floor((width - GAP) / this.cols) - GAP);
      const rows = Math.ceil(this.view.length / this.cols);
      this.spacer.style.height = (rows * (CARD_H + GAP) + GAP) + "px";
      this.renderWindow(true);
    }

    renderWindow(force) {
      const rowH = CARD_H + GAP;
      const top = this.scroller.scrollTop, height = this.scroller.clientHeight || 600;
      const first = Math.max(0, Math.floor(top / rowH) - OVERSCAN_ROWS);
      const last = Math.ceil((top + height) / rowH) + OVERSCAN_ROWS;
      const start = first * this.cols, end = Math.min(this.view.length, last * this.cols);
      if (!force && start === this.start && end === this.end) return;
      this.start = start;
      this.end = end;
      // a card's node is kept while it shows the same record the same way (a search, a sort or a
      // scroll only moves it); what a node shows of the family filter, the duplicate groups and the
      // usage is drawn when it is made, so a change of any of them makes new nodes
      if (this.drawnFamily !== this.family || this.drawnDups !== this.dupGroups || this.drawnUsage !== this.usageStamp) {
        this.drawnFamily = this.family;
        this.drawnDups = this.dupGroups;
        this.drawnUsage = this.usageStamp;
        for (const node of this.nodes.values()) node.remove();
        this.nodes.clear();
      }
      const wanted = new Map();
      for (let i = start; i < end; i++) wanted.set(this.view[i].id, i);
      for (const [id, node] of this.nodes) {
        const stale = node.lpCard !== this.byId.get(id);
        if ((stale || !wanted.has(id)) && !node.contains(document.activeElement)) { node.remove(); this.nodes.delete(id); }
      }
      for (const [id, i] of wanted) {
        let node = this.nodes.get(id);
        if (node && node.lpCard !== this.view[i]) { node.remove(); node = null; } // replaced while it had the focus
        if (!node) {
          node = this.makeCard(this.view[i]);
          node.lpCard = this.view[i];
          this.nodes.set(id, node);
          this.spacer.appendChild(node);
        }
        const row = Math.floor(i / this.cols), col = i % this.cols;
        node.style.transform = "translate(" + (GAP + col * (this.cardW + GAP)) + "px," + (GAP + row * rowH) + "px)";
        node.style.width = this.cardW + "px";
        node.classList.toggle("lp-cursor", i === this.cursor);
        node.setAttribute("aria-selected", i === this.cursor ? "true" : "false");
      }
    }

    makeCard(c) {
      const card = el("div", "lp-card");
      card.dataset.id = c.id;
      card.setAttribute("role", "option");
      card.classList.toggle("lp-nsfw", !!c.nsfw);
      card.classList.toggle("lp-misfit", !!this.misfit(c));
      card.title = c.name + (c.alias && c.alias !== c.name ? " (alias " + c.alias + ")" : "") + "\n" + c.folder
        + (c.uses ? "\nUsed in " + c.uses + " generation" + (c.uses === 1 ? "" : "s") + ", last "
          + new Date(c.last_used).toLocaleString() : "");
      const thumb = el("div", "lp-thumb");
      if (c.thumb) {
        const img = el("img");
        img.loading = "lazy";
        img.decoding = "async";
        img.alt = "";
        img.src = this.api + "/" + c.thumb;
        thumb.appendChild(img);
      } else {
        thumb.appendChild(el("span", "lp-initial", c.name.slice(0, 1).toUpperCase()));
      }
      const badge = el("span", "lp-badge lp-badge-" + (c.family || "unknown"), c.badge);
      badge.title = c.family_title;
      thumb.appendChild(badge);
      if (c.favorite) thumb.appendChild(el("span", "lp-fav", "★"));
      if (this.duplicateBadge) this.duplicateBadge(c, thumb);
      if (c.tag_note) {
        const warn = el("span", "lp-same-name lp-tag-note", "⚠ name");
        warn.title = c.tag_note + "\nThis card inserts <lora:" + c.tag_name + ":…>";
        thumb.appendChild(warn);
      } else if (c.tag_name !== c.name) {
        const same = el("span", "lp-same-name", "same name");
        same.title = "Another file is also named " + c.name + "; this card inserts <lora:" + c.tag_name + ":…>";
        thumb.appendChild(same);
      }
      const name = el("div", "lp-name", c.name);
      const trig = el("div", "lp-triggers");
      for (const w of c.triggers) trig.appendChild(el("span", "lp-chip", w));
      const strengths = el("div", "lp-strengths");
      const s = this.strengths.get(c.id);
      for (const part of ["te", "unet"]) {
        const label = el("label", "lp-strength", part === "te" ? "TE" : "UNet");
        const input = el("input", "lp-" + part);
        input.type = "number";
        input.step = "0.05";
        input.value = String(s[part]);
        input.setAttribute("aria-label", (part === "te" ? "Text-encoder" : "UNet") + " strength of " + c.name);
        input.addEventListener("click", (e) => e.stopPropagation());
        input.addEventListener("input", () => {
          const v = parseFloat(input.value);
          if (Number.isFinite(v)) s[part] = v;
        });
        input.addEventListener("keydown", (e) => {
          e.stopPropagation();
          if (e.key === "Enter") { e.preventDefault(); this.insert(c, e.shiftKey, card); }
        });
        label.appendChild(input);
        strengths.appendChild(label);
      }
      const actions = el("div", "lp-actions");
      const info = el("button", "lp-btn lp-info", "Info");
      info.type = "button";
      info.title = "Details";
      info.addEventListener("click", (e) => { e.stopPropagation(); this.showDetails(c); });
      const edit = el("button", "lp-btn lp-edit", "Edit");
      edit.type = "button";
      edit.title = "Edit metadata";
      edit.addEventListener("click", (e) => { e.stopPropagation(); this.showEditor(c); });
      actions.append(info, edit, el("span", "lp-size", fmtSize(c.size)));
      card.append(thumb, name, trig, strengths, actions);
      card.addEventListener("click", (e) => {
        this.cursor = this.view.indexOf(c);
        this.insert(c, e.shiftKey, card);
      });
      return card;
    }

    moveCursor(delta) {
      if (!this.view.length) return;
      this.cursor = Math.max(0, Math.min(this.view.length - 1, this.cursor + delta));
      const rowH = CARD_H + GAP, row = Math.floor(this.cursor / this.cols);
      const top = row * rowH, bottom = top + rowH + GAP;
      if (top < this.scroller.scrollTop) this.scroller.scrollTop = top;
      else if (bottom > this.scroller.scrollTop + this.scroller.clientHeight) {
        this.scroller.scrollTop = bottom - this.scroller.clientHeight;
      }
      this.renderWindow(true);
    }

    onGridKey(e) {
      const moves = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -this.cols, ArrowDown: this.cols,
        PageUp: -this.cols * 3, PageDown: this.cols * 3 };
      if (e.key in moves) { e.preventDefault(); this.moveCursor(moves[e.key]); }
      else if (e.key === "Home") { e.preventDefault(); this.moveCursor(-this.cursor); }
      else if (e.key === "End") { e.preventDefault(); this.moveCursor(this.view.length); }
      else if (e.key === "Enter") { e.preventDefault(); this.insertAt(this.cursor, e.shiftKey); }
    }

    insertAt(index, shift) {
      const c = this.view[index];
      if (c) this.insert(c, shift, this.nodes.get(c.id));
    }

    target() {
      return this.targets[Number(this.targetSel.value) || 0];
    }

    async insert(c, shift, node) {
      const target = this.target();
      const prompt = target && findField(target.prompt);
      if (!prompt) { this.say("No prompt box to insert into", true); return; }
      const negative = target.negative ? findField(target.negative) : null;
      const s = this.strengths.get(c.id);
      try {
        const r = await this.request("insert", {
          id: c.id, te: s.te, unet: s.unet, activation: this.actBox.checked !== !!shift,
          prompt: prompt.value, negative: negative ? negative.value : null,
        });
        setField(prompt, r.prompt);
        if (negative && r.negative !== null && r.negative !== undefined) setField(negative, r.negative);
        this.say(r.message);
        if (node) { node.classList.remove("lp-flash"); void node.offsetWidth; node.classList.add("lp-flash"); }
      } catch (err) {
        this.say("Could not insert " + c.name + ": " + err.message, true);
      }
    }

  }

  LP.Gallery = Gallery;
})();
