// loraprompt gallery, part 5 of 6: duplicate groups. The server hashes the files that can be
// duplicates in the background; the polled state carries its progress, and once groups are found
// a toolbar button shows only the duplicates, group by group, each card badged with its group.
(function () {
  "use strict";
  const LP = window.LoraPromptGalleryParts;
  if (!LP || !LP.Gallery || LP.Gallery.prototype.checkDuplicates) return;
  const { el } = LP;
  const MAX_LISTED = 20; // files a duplicate badge's tooltip names
  const KIND = { "same-file": "same file", "same-tensors": "same tensors, other header", "same-name": "same name, other content" };

  Object.assign(LP.Gallery.prototype, {
    async checkDuplicates(state) {
      const h = state.hashing || {};
      this.dupNote.textContent = h.running && h.total
        ? "Looking for duplicates: " + h.done + " of " + h.total + " files hashed" : "";
      if (state.duplicates_stamp === this.dupStamp) return;
      const data = await this.request("duplicates");
      this.dupStamp = data.stamp;
      this.setDuplicates(data.groups);
    },

    setDuplicates(groups) {
      this.dupGroups = groups;
      this.dupOf = new Map();
      groups.forEach((g, i) => { for (const id of g.ids) if (!this.dupOf.has(id)) this.dupOf.set(id, i); });
      if (!this.dupBound) {
        this.dupBound = true;
        this.dupBtn.addEventListener("click", () => { this.dupMode = !this.dupMode; this.updateDupButton(); this.applyFilter(); });
      }
      if (!groups.length) this.dupMode = false;
      this.updateDupButton();
      this.applyFilter();
    },

    updateDupButton() {
      const n = this.dupGroups ? this.dupGroups.length : 0;
      this.dupBtn.hidden = !n;
      this.dupBtn.textContent = this.dupMode ? "Show all cards" : "Duplicates (" + n + ")";
      this.dupBtn.title = n + " group" + (n === 1 ? "" : "s") + " of files with the same content or name";
    },

    onlyDuplicates(view) {
      const shown = new Set(view.map((c) => c.id));
      const out = [];
      for (const g of this.dupGroups || []) {
        for (const id of g.ids) {
          const c = this.byId.get(id);
          if (c && shown.delete(id)) out.push(c); // a file in two groups is shown once
        }
      }
      return out;
    },

    duplicateBadge(c, thumb) {
      const i = this.dupOf ? this.dupOf.get(c.id) : undefined;
      if (i === undefined) return;
      const g = this.dupGroups[i];
      const others = []; // the first few: a group can hold thousands of files, and a card is drawn per scroll
      for (const id of g.ids) {
        if (others.length === MAX_LISTED) break;
        if (id !== c.id) others.push(id.replace(/^\d+\//, ""));
      }
      const more = g.ids.length - 1 - others.length;
      const badge = el("span", "lp-dup", "duplicate");
      badge.title = KIND[g.kind] + " as:\n" + others.join("\n") + (more > 0 ? "\nand " + more + " more" : "");
      thumb.appendChild(badge);
    },
  });
})();
