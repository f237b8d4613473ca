// The maze panel's arithmetic in plain JavaScript (loaded after models.js, whose DeqNCA it extends):
// - MazeModel: DT-recall and the maze DEQs (tasks/maze/recall.py): float32 storage, float64 accumulation;
// - GeodesicModel, TraceModel: the max-plus equilibrium rules (tasks/maze/geodesic.py, trace.py), whose states
//   equal PyTorch's bit for bit, and their read-outs (within float32 round-off);
// - generateMaze: randomised depth-first carving, with extra openings (loops) if asked; mazeImage: to_images.
// tests/test_web.py checks every model against PyTorch.
"use strict";

Object.assign(DeqNCA, (() => {
  const { decode, packConv, conv3x3, relResidual } = DeqNCA;
  const fl = Math.fround;

  // ---- DT-recall and the maze DEQs (maze/model.py, maze/recall.py) ---------------------------------------
  // a = W_z*z + W_x*x (bias-free recall conv, x injected); a ← relu(a + conv2(relu(conv1(a)))) per
  // block; DT-recall: z' = a; DEQ: z' = c·tanh(a/c). Head: three 3x3 convs; path = argmax 1 on open pixels.

  class MazeModel {
    constructor(spec) {
      const c = (this.config = spec.config), t = {};
      for (const k in spec.tensors) t[k] = decode(spec.tensors[k]);
      this.C = c.width;
      this.Wx = packConv(t.recall_x); this.Wz = packConv(t.recall_z);
      this.blocks = [];
      for (let i = 0; i < c.blocks; i++)
        this.blocks.push([packConv(t[`block${i}_conv1`]), packConv(t[`block${i}_conv2`])]);
      this.head = [0, 1, 2].map((i) => ({ w: packConv(t[`head${i}`]), cin: t[`head${i}`].shape[1], cout: t[`head${i}`].shape[0] }));
      this.projection = t.projection ? packConv(t.projection) : null;
    }

    bind(x, H, W) {
      const n = H * W, C = this.C;
      this.H = H; this.W = W; this.x = x;
      this.drive = conv3x3(x, H, W, 3, this.Wx, C, null, null, new Float32Array(n * C), false);
      this.a = new Float32Array(n * C); this.h = new Float32Array(n * C); this.b = new Float32Array(n * C);
    }

    // the test-time initial state: DT's projection relu(P*x), or zeros for the DEQ
    init() {
      const n = this.H * this.W, z = new Float32Array(n * this.C);
      return this.projection ? conv3x3(this.x, this.H, this.W, 3, this.projection, this.C, null, null, z, true) : z;
    }

    step(z, next) {
      const { H, W, C } = this;
      let a = conv3x3(z, H, W, C, this.Wz, C, null, this.drive, this.a, false), other = this.b;
      for (const [w1, w2] of this.blocks) {
        conv3x3(a, H, W, C, w1, C, null, null, this.h, true);
        conv3x3(this.h, H, W, C, w2, C, null, a, other, true);
        [a, other] = [other, a];
      }
      if (this.config.form === "dt") next.set(a);
      else {
        const c = this.config.bound;
        for (let i = 0; i < next.length; i++) next[i] = c * Math.tanh(a[i] / c);
      }
      return relResidual(z, next);
    }

    // (path mask, logits): argmax over the two classes (ties: "not path", as torch.argmax), open pixels only
    predict(z) {
      const { H, W } = this, n = H * W;
      let v = z, cin = this.C;
      this.head.forEach((l, i) => {
        v = conv3x3(v, H, W, cin, l.w, l.cout, null, null, new Float32Array(n * l.cout), i < 2);
        cin = l.cout;
      });
      const path = new Uint8Array(n);
      for (let i = 0; i < n; i++) {
        const open = this.x[3 * i] > 0 || this.x[3 * i + 1] > 0 || this.x[3 * i + 2] > 0;
        path[i] = open && v[2 * i + 1] > v[2 * i] ? 1 : 0;
      }
      return { path, logits: v };
    }
  }

  // ---- max-plus equilibrium rules (tasks/maze/geodesic.py, trace.py) ------------------------------------
  // On a grid (the image's pixels for the geodesic rule; the layout's cells, `to_cells`, for the trace rule):
  //   flood   f'_c(p) = clip(max(s_c(p), open(p)·(max_{q ∈ N4(p)} f_c(q) − K(p))), 0, Z)   (the border reads 0)
  //   trace  t'_cd(p) = clip(max(s_d(p), open(p)·(max_{q ∈ N4(p), g_c(p,q)} t_cd(q) − K(p))), 0, Z)
  //   gate  g_c(p, q) = f_c(q) > 0 and f_c(q) = f_c(p) − K(q)
  // Values are float32 and every arithmetic result is rounded to float32 (fl(a − b) of two float32 numbers, done
  // in double, is exactly float32 subtraction), so a state is PyTorch's bit for bit. The input fields come per
  // colour from PyTorch (export.py): a > 0 and sigmoid(a) of each flood's emission logit a, the float32 cost K and
  // open; the page does not recompute the sigmoid (Math.exp is not torch's exp in the last bit). The emitters, as the
  // rules write them (export.emitters), with Z = cost_max·H·W (rule.ceiling, a Python float) rounded to float32
  // where torch multiplies it into a float32 tensor, and clamps to it:
  //   geodesic  s = Z·((a > 0) + soft − soft)·open      trace  s = (Z·(a > 0) + soft − soft)·open
  // (soft − soft cancels in value but not in rounding: s is Z give or take an ulp.) A step recomputes only the cells
  // next to a cell that changed in the previous one: a cell's new value is a function of its closed neighbourhood,
  // so no other cell can change. That is the same map (the same states after every step), cheap once the floods
  // have passed; the residual is exactly 0 at the fixed point.

  const PALETTE = [[0, 0, 0], [1, 1, 1], [0, 1, 0], [1, 0, 0]];        // wall, open, start, goal (generate.py)

  function colourIndex(r, g, b) {
    for (let k = 0; k < 4; k++) if (r === PALETTE[k][0] && g === PALETTE[k][1] && b === PALETTE[k][2]) return k;
    throw new Error(`not a maze colour: (${r}, ${g}, ${b})`);
  }

  // the 8 rotations and reflections in dihedral_mean's order (torch.rot90(z, k, (2, 3)), then .flip(3)): idx[q] is
  // the cell of the original grid at position q of the transformed (h × w) one
  function dihedral(H, W) {
    const out = [];
    for (let k = 0; k < 4; k++) for (const flip of [false, true]) {
      let h = H, w = W, idx = Int32Array.from({ length: H * W }, (_, i) => i);
      for (let r = 0; r < k; r++) {                     // rot90: out[i][j] = in[j][w − 1 − i], shape (w, h)
        const next = new Int32Array(h * w);
        for (let i = 0; i < w; i++) for (let j = 0; j < h; j++) next[i * h + j] = idx[j * w + w - 1 - i];
        idx = next; [h, w] = [w, h];
      }
      if (flip) {
        const next = new Int32Array(h * w);
        for (let i = 0; i < h; i++) for (let j = 0; j < w; j++) next[i * w + j] = idx[i * w + w - 1 - j];
        idx = next;
      }
      out.push({ h, w, idx });
    }
    return out;
  }

  // neighbour_features: (y(q) − y(p)) / scale clipped to [−2, 2] for the neighbours q above, below, left and right
  // of p (the border reads 0), channels direction-major, into out[i*F + off ...]
  function neighbourFeatures(z, h, w, C, scale, out, F, off) {
    for (let r = 0; r < h; r++) for (let c = 0; c < w; c++) {
      const i = r * w + c, nb = [r > 0 ? i - w : -1, r < h - 1 ? i + w : -1, c > 0 ? i - 1 : -1, c < w - 1 ? i + 1 : -1];
      for (let d = 0; d < 4; d++) {
        const q = nb[d], o = i * F + off + d * C;
        for (let ch = 0; ch < C; ch++) {
          const v = fl(fl((q < 0 ? 0 : z[q * C + ch]) - z[i * C + ch]) / scale);
          out[o + ch] = v < -2 ? -2 : v > 2 ? 2 : v;
        }
      }
    }
    return out;
  }

  class ExactMaze {
    constructor(spec) {
      const c = (this.config = spec.config), t = {};
      for (const k in spec.tensors) t[k] = decode(spec.tensors[k]);
      this.C = c.channels; this.P = c.floods; this.cells = c.grid === "cells";
      this.bit = t.bit.data; this.soft = t.soft.data; this.costOf = t.cost.data; this.openOf = t.open.data;   // per colour
      this.head = [0, 1, 2].map((i) => ({ w: packConv(t[`head${i}`]), cin: t[`head${i}`].shape[1], cout: t[`head${i}`].shape[0] }));
    }

    // bind the rule to maze image x (H*W*3): the grid, its fields per cell, Z
    bind(x, H, W) {
      const cells = this.cells, h = cells ? (H - 2) / 2 : H, w = cells ? (W - 2) / 2 : W, n = h * w, P = this.P;
      if (!Number.isInteger(h) || !Number.isInteger(w)) throw new Error(`${H}x${W}: not a maze image`);
      Object.assign(this, { x, H, W, h, w, n });
      const Z = (this.Z = fl(this.config.cost_max * h * w)), geodesic = this.config.form === "geodesic";
      const sOf = new Float32Array(4 * P);          // the emitters of each colour
      for (let k = 0; k < 4 * P; k++) {
        const bit = this.bit[k], soft = this.soft[k];
        if (!this.openOf[Math.floor(k / P)]) sOf[k] = 0;
        else sOf[k] = geodesic ? fl(Z * fl(fl(bit + soft) - soft)) : fl(fl(fl(Z * bit) + soft) - soft);
      }
      this.cost = new Float32Array(n); this.open = new Uint8Array(n); this.s = new Float32Array(n * P);
      this.colour = new Uint8Array(n);
      for (let r = 0; r < h; r++) for (let c = 0; c < w; c++) {
        const i = r * w + c, rgb = [0, 1, 2].map((ch) => {
          if (!cells) return x[3 * i + ch];
          const at = (dy, dx) => x[3 * ((1 + 2 * r + dy) * W + 1 + 2 * c + dx) + ch];
          return fl(fl(fl(fl(at(0, 0) + at(0, 1)) + at(1, 0)) + at(1, 1)) / 4);     // to_cells: the block's mean
        });
        const k = (this.colour[i] = colourIndex(...rgb));
        this.cost[i] = this.costOf[k]; this.open[i] = this.openOf[k];
        for (let f = 0; f < P; f++) this.s[i * P + f] = sOf[k * P + f];
      }
      this.nb = [0, 1, 2, 3].map(() => new Int32Array(n));       // up, down, left, right; −1 beyond the border
      for (let r = 0; r < h; r++) for (let c = 0; c < w; c++) {
        const i = r * w + c;
        this.nb[0][i] = r > 0 ? i - w : -1; this.nb[1][i] = r < h - 1 ? i + w : -1;
        this.nb[2][i] = c > 0 ? i - 1 : -1; this.nb[3][i] = c < w - 1 ? i + 1 : -1;
      }
      this.changed = new Int32Array(n); this.fresh = new Int32Array(n); this.stamp = new Int32Array(n);
      this.nChanged = 0; this.epoch = 0; this.lastIn = this.lastOut = null;
    }

    init() { return new Float32Array(this.n * this.C); }   // the test-time start: zeros

    // rule.steps_bound: every state in [0, Z] reaches the fixed point within it
    stepsBound() {
      const b = Math.ceil((this.config.cost_max / this.config.cost_min) * this.h * this.w) + 1;
      return this.cells ? 2 * b : b;
    }

    // next = f(z); returns the relative residual of z (0: z is the fixed point). Only the cells next to one that
    // changed are recomputed when z and next are the two states of the previous call, swapped.
    step(z, next) {
      const n = this.n, C = this.C, fresh = this.fresh;
      let d2 = 0, n2 = 0, count = 0;
      const visit = (i) => {
        this.cell(z, next, i);
        let moved = false;
        for (let o = i * C, e = o + C; o < e; o++) {
          const v = next[o], old = z[o];
          if (v !== old) { const d = v - old; d2 += d * d; n2 += v * v - old * old; moved = true; }
        }
        if (moved) fresh[count++] = i;
      };
      if (z === this.lastOut && next === this.lastIn) {
        n2 = this.norm2;
        const stamp = this.stamp, ep = ++this.epoch, [up, down, left, right] = this.nb, ch = this.changed;
        const once = (i) => { if (i >= 0 && stamp[i] !== ep) { stamp[i] = ep; visit(i); } };
        for (let a = 0; a < this.nChanged; a++) {
          const p = ch[a];
          once(p); once(up[p]); once(down[p]); once(left[p]); once(right[p]);
        }
      } else {
        for (let o = 0; o < z.length; o++) n2 += z[o] * z[o];
        for (let i = 0; i < n; i++) visit(i);
      }
      [this.changed, this.fresh] = [fresh, this.changed];
      this.nChanged = count; this.norm2 = n2; this.lastIn = z; this.lastOut = next;
      return Math.sqrt(d2) / (Math.sqrt(Math.max(n2, 0)) + 1e-8);
    }

    // one flood channel c of cell i (open): max(s, max over neighbours − K), clipped to [0, Z]
    flood(z, i, c, k) {
      const C = this.C, Z = this.Z, up = this.nb[0][i], down = this.nb[1][i], left = this.nb[2][i], right = this.nb[3][i];
      let m = up < 0 ? 0 : z[up * C + c], v = down < 0 ? 0 : z[down * C + c];
      if (v > m) m = v;
      v = left < 0 ? 0 : z[left * C + c]; if (v > m) m = v;
      v = right < 0 ? 0 : z[right * C + c]; if (v > m) m = v;
      return this.clip(fl(m - k), this.s[i * this.P + c]);
    }

    clip(f, s) {                          // torch.maximum(s, f).clamp(0, Z)
      const v = s > f ? s : f, Z = this.Z;
      return v > 0 ? (v < Z ? v : Z) : 0;
    }

    // (path mask, logits) on the image: argmax over the two classes (ties: "not path"), open pixels only
    predict(z) {
      const parts = this.readout(z);
      let r;
      do r = parts.next(); while (!r.done);
      return r.value;
    }

    // predict in parts (a generator: it yields the fraction done, ~4M multiply-adds apart, and returns predict's
    // answer): the head is the page's slowest computation, so that a panel can spread it over frames. The logits
    // are the head's (ConvHead of the features) or, with readout_symmetry d4, their mean over the 8 rotations and
    // reflections of the state (dihedral_mean, summed in its order in float32)
    *readout(z) {
      const { h, w, C } = this, views = this.config.symmetry === "d4" ? dihedral(h, w) : [null];
      const work = views.length * h * w * 9 * this.head.reduce((s, l) => s + l.cin * l.cout, 0);
      const acc = new Float32Array(h * w * 2);
      let done = 0;
      for (const g of views) {
        let gz = z;
        if (g) {
          gz = new Float32Array(z.length);
          for (let q = 0; q < g.idx.length; q++) gz.set(z.subarray(g.idx[q] * C, (g.idx[q] + 1) * C), q * C);
        }
        const gh = g ? g.h : h, gw = g ? g.w : w;
        let v = this.features(gz, gh, gw);
        for (const [i, l] of this.head.entries()) {
          const out = new Float32Array(gh * gw * l.cout), rowWork = gw * 9 * l.cin * l.cout;
          const band = Math.max(1, Math.floor(4e6 / rowWork));
          for (let y = 0; y < gh; y += band) {
            conv3x3(v, gh, gw, l.cin, l.w, l.cout, null, null, out, i < 2, y, Math.min(gh, y + band));
            done += rowWork * (Math.min(gh, y + band) - y);
            yield done / work;
          }
          v = out;
        }
        const idx = g ? g.idx : null;
        for (let q = 0; q < gh * gw; q++) {
          const p = idx ? idx[q] : q;
          acc[2 * p] = fl(acc[2 * p] + v[2 * q]); acc[2 * p + 1] = fl(acc[2 * p + 1] + v[2 * q + 1]);
        }
      }
      const logits = this.pixelLogits(views.length > 1 ? acc.map((v) => v / views.length) : acc);
      const n = this.H * this.W, path = new Uint8Array(n), x = this.x;
      for (let i = 0; i < n; i++) {
        const open = x[3 * i] > 0 || x[3 * i + 1] > 0 || x[3 * i + 2] > 0;
        path[i] = open && logits[2 * i + 1] > logits[2 * i] ? 1 : 0;
      }
      return { path, logits };
    }
  }

  // the geodesic rule on the image's pixels; read-out: neighbour differences / cost_max -> ConvHead
  class GeodesicModel extends ExactMaze {
    cell(z, out, i) {
      const C = this.C, o = i * C;
      if (!this.open[i]) { out.fill(0, o, o + C); return; }       // a wall: open·(…) = 0 and s = 0
      const k = this.cost[i];
      for (let c = 0; c < C; c++) out[o + c] = this.flood(z, i, c, k);
    }

    features(z, h, w) {
      const C = this.C;
      return neighbourFeatures(z, h, w, C, this.config.cost_max, new Float32Array(h * w * 4 * C), 4 * C, 0);
    }

    pixelLogits(g) { return g; }
    reached(z, i) { for (let c = 0; c < this.C; c++) if (z[i * this.C + c] > 0) return true; return false; }
    traced() { return false; }
  }

  // the trace rule on the layout's cells: P floods, then a trace t_cd for every ordered pair (c, d) of distinct
  // floods (trace.pairs: c-major), running back down flood c from the emitters of flood d
  class TraceModel extends ExactMaze {
    constructor(spec) {
      super(spec);
      const P = this.P;
      this.follow = []; this.emitFrom = [];
      for (let c = 0; c < P; c++) for (let d = 0; d < P; d++) if (c !== d) { this.follow.push(c); this.emitFrom.push(d); }
      this.gate = new Uint8Array(4 * P);
    }

    cell(z, out, i) {
      const C = this.C, P = this.P, o = i * C;
      if (!this.open[i]) { out.fill(0, o, o + C); return; }
      const k = this.cost[i], g = this.gate, cost = this.cost, q4 = [this.nb[0][i], this.nb[1][i], this.nb[2][i], this.nb[3][i]];
      for (let c = 0; c < P; c++) out[o + c] = this.flood(z, i, c, k);
      for (let d = 0; d < 4; d++) {                 // g[d, c]: neighbour d's flood c came from this cell
        const q = q4[d];
        for (let c = 0; c < P; c++) {
          const fq = q < 0 ? 0 : z[q * C + c];
          g[d * P + c] = fq > 0 && fq === fl(z[o + c] - cost[q]) ? 1 : 0;
        }
      }
      for (let j = 0; j < C - P; j++) {
        const c = this.follow[j];
        let m = 0;
        for (let d = 0; d < 4; d++) {
          if (!g[d * P + c]) continue;
          const v = z[q4[d] * C + P + j];
          if (v > m) m = v;
        }
        out[o + P + j] = this.clip(fl(m - k), this.s[i * P + this.emitFrom[j]]);
      }
    }

    // TraceRule.features: per channel reached (y > 0), then the neighbour differences / cost_max
    features(z, h, w) {
      const C = this.C, F = 5 * C, out = new Float32Array(h * w * F);
      for (let i = 0; i < h * w; i++) for (let c = 0; c < C; c++) out[i * F + c] = z[i * C + c] > 0 ? 1 : 0;
      return neighbourFeatures(z, h, w, C, this.config.cost_max, out, F, C);
    }

    // to_pixels: each cell's logits on its 2x2 block of the image, the 1-pixel border (0, −30): not path
    pixelLogits(g) {
      const { H, W, w } = this, out = new Float32Array(H * W * 2);
      for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
        const o = 2 * (y * W + x);
        if (y === 0 || x === 0 || y === H - 1 || x === W - 1) { out[o + 1] = -30; continue; }
        const i = ((y - 1) >> 1) * w + ((x - 1) >> 1);
        out[o] = g[2 * i]; out[o + 1] = g[2 * i + 1];
      }
      return out;
    }

    reached(z, i) { for (let c = 0; c < this.P; c++) if (z[i * this.C + c] > 0) return true; return false; }
    traced(z, i) { for (let c = this.P; c < this.C; c++) if (z[i * this.C + c] > 0) return true; return false; }
  }

  // ---- mazes (generate.py): randomised depth-first carving from the start cell, then extra openings ----------
  // A perfect maze has one path between any two cells. With `loops` > 0, round(loops · cells) walls between two
  // cells are opened as well, in random order; an opening after which the start-to-goal shortest path is no
  // longer unique is closed again and another wall drawn (the target is *the* shortest path). Without loops the
  // random numbers are used as before, so a seed gives the same perfect maze.

  const WALL = 0, OPEN = 1, START = 2, GOAL = 3, ON_PATH = 4, KIND = 3;

  function generateMaze(size, rand, loops = 0) {
    const n = (size + 1) / 2, side = 2 * n + 1, layout = new Uint8Array(side * side);
    const start = Math.floor(rand() * n * n);
    let goal = Math.floor(rand() * (n * n - 1));
    if (goal >= start) goal++;                              // two distinct cells, as rng.sample
    const parent = new Int32Array(n * n).fill(-1), visited = new Uint8Array(n * n);
    const at = (c) => (2 * Math.floor(c / n) + 1) * side + 2 * (c % n) + 1;
    const between = (a, b) => (Math.floor(a / n) + Math.floor(b / n) + 1) * side + (a % n) + (b % n) + 1;
    for (let c = 0; c < n * n; c++) layout[at(c)] = OPEN;
    visited[start] = 1;
    const stack = [start];
    while (stack.length) {
      const c = stack[stack.length - 1], r = Math.floor(c / n), q = c % n, options = [];
      if (r > 0 && !visited[c - n]) options.push(c - n);
      if (r < n - 1 && !visited[c + n]) options.push(c + n);
      if (q > 0 && !visited[c - 1]) options.push(c - 1);
      if (q < n - 1 && !visited[c + 1]) options.push(c + 1);
      if (!options.length) { stack.pop(); continue; }
      const next = options[Math.floor(rand() * options.length)];
      visited[next] = 1; parent[next] = c;
      layout[between(next, c)] = OPEN;
      stack.push(next);
    }
    layout[at(start)] = START;
    layout[at(goal)] = GOAL;
    if (loops > 0) {
      addLoops(layout, side, at(start), at(goal), Math.round(loops * n * n), rand);
      const { prev } = shortestPaths(layout, side, at(start), at(goal));
      for (let p = at(goal); p >= 0; p = prev[p]) layout[p] |= ON_PATH;
    } else {
      for (let c = goal; c !== start; c = parent[c]) {       // the goal's chain of parents is the path
        layout[at(c)] |= ON_PATH;
        layout[between(c, parent[c])] |= ON_PATH;
      }
      layout[at(start)] |= ON_PATH;
      layout[at(goal)] |= ON_PATH;
    }
    return { size, side, layout, loops };
  }

  // breadth-first search from `start` over open layout pixels, up to the goal's distance: the number of shortest
  // paths to the goal (counted up to 2) and a predecessor of every pixel reached (−1: none)
  function shortestPaths(layout, side, start, goal, buf) {
    const N = side * side, { dist, count, prev, queue } = buf || {
      dist: new Int32Array(N), count: new Uint8Array(N), prev: new Int32Array(N), queue: new Int32Array(N) };
    dist.fill(-1); prev.fill(-1);
    dist[start] = 0; count[start] = 1;
    let head = 0, tail = 0;
    queue[tail++] = start;
    const reach = (p, q) => {                       // the border is wall: no index leaves the grid
      if ((layout[q] & KIND) === WALL) return;
      if (dist[q] < 0) { dist[q] = dist[p] + 1; count[q] = count[p]; prev[q] = p; queue[tail++] = q; }
      else if (dist[q] === dist[p] + 1 && count[q] < 2) count[q] = Math.min(2, count[q] + count[p]);
    };
    while (head < tail) {
      const p = queue[head++];
      if (dist[goal] >= 0 && dist[p] >= dist[goal]) break;
      reach(p, p - side); reach(p, p + side); reach(p, p - 1); reach(p, p + 1);
    }
    return { paths: count[goal], prev, dist, count, queue };
  }

  function addLoops(layout, side, start, goal, want, rand) {
    const walls = [];                  // walls between two cells: one coordinate odd, the other even, inside
    for (let r = 1; r < side - 1; r++) for (let c = 1; c < side - 1; c++)
      if ((r + c) % 2 === 1 && layout[r * side + c] === WALL) walls.push(r * side + c);
    for (let i = walls.length - 1; i > 0; i--) {           // Fisher–Yates
      const j = Math.floor(rand() * (i + 1));
      [walls[i], walls[j]] = [walls[j], walls[i]];
    }
    let buf = null, opened = 0, next = 0;
    const unique = () => (buf = shortestPaths(layout, side, start, goal, buf)).paths === 1;
    const open = (i, j) => {           // walls[i..j) open if the path stays unique, else halves: how many stay open
      for (let k = i; k < j; k++) layout[walls[k]] = OPEN;
      if (unique()) return j - i;
      for (let k = i; k < j; k++) layout[walls[k]] = WALL;
      const m = (i + j) >> 1;
      return j - i === 1 ? 0 : open(i, m) + open(m, j);
    };
    while (opened < want && next < walls.length) {         // a few at a time: one search for most of them
      const k = Math.min(want - opened, walls.length - next, 16);
      opened += open(next, next + k);
      next += k;
    }
    return opened;
  }

  // the network's input: palette colours, every layout pixel 2x2, a 1-pixel black border (to_images)
  function mazeImage(maze) {
    const { side, layout } = maze, S = 2 * side + 2, x = new Float32Array(S * S * 3), path = new Uint8Array(S * S);
    for (let y = 1; y < S - 1; y++) for (let xx = 1; xx < S - 1; xx++) {
      const l = layout[Math.floor((y - 1) / 2) * side + Math.floor((xx - 1) / 2)], i = y * S + xx;
      const col = PALETTE[l & KIND];
      for (let c = 0; c < 3; c++) x[3 * i + c] = col[c];
      path[i] = l & ON_PATH ? 1 : 0;
    }
    return { x, H: S, W: S, path };
  }

  Object.assign(DeqNCA.KINDS, { maze: MazeModel, geodesic: GeodesicModel, trace: TraceModel });
  return { generateMaze, shortestPaths, mazeImage, MazeModel, ExactMaze, GeodesicModel, TraceModel,
           WALL, OPEN, START, GOAL, ON_PATH };
})());
