// The page: four panels driving the models of models.js, one animation loop, and a test hook
// (window.deqncaTest) through which tests/test_web.py compares the page with PyTorch.
"use strict";

const BUNDLE = window.DEQNCA || { models: {} };
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const RGB = COLORS.map((c) => [1, 3, 5].map((i) => parseInt(c.slice(i, i + 2), 16)));
const $ = (id) => document.getElementById(id);
let seedCounter = 1;
const nextRand = () => DeqNCA.rng(seedCounter++ * 2654435761);
const models = {};
for (const name in BUNDLE.models) models[name] = DeqNCA.load(BUNDLE.models[name]);

// ---- drawing helpers ------------------------------------------------------------------------------

function paint(canvas, W, H, rgbaOf) {       // rgbaOf(i, out4) fills the colour of cell i (0..255)
  if (canvas.width !== W || canvas.height !== H) { canvas.width = W; canvas.height = H; }
  const ctx = canvas.getContext("2d"), img = ctx.createImageData(W, H), px = [0, 0, 0, 255];
  for (let i = 0; i < W * H; i++) {
    px[3] = 255;
    rgbaOf(i, px);
    img.data.set(px, 4 * i);
  }
  ctx.putImageData(img, 0, 0);
}

// line plot of series (arrays of numbers) over steps; log: log10 axis with decades
function plot(canvas, series, { log = false, title = "", colors = ["#1f77b4"], xmin = 20, ymin, ymax } = {}) {
  const ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height, l = 40, r = 8, t = 18, b = 18;
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px sans-serif"; ctx.fillStyle = "#333";
  ctx.fillText(title, l, 12);
  const tf = (v) => (log ? Math.log10(Math.max(v, 1e-12)) : v);
  let lo = Infinity, hi = -Infinity, count = 0;           // a loop, not Math.min(...): series may be long
  for (const s of series) for (const v of s) if (Number.isFinite(v)) { const t = tf(v); lo = Math.min(lo, t); hi = Math.max(hi, t); count++; }
  if (ymin !== undefined) lo = tf(ymin);
  if (ymax !== undefined) hi = tf(ymax);
  if (!count) { lo = log ? -4 : 0; hi = log ? 0 : 1; }
  if (log) { lo = Math.floor(lo); hi = Math.max(Math.ceil(hi), lo + 1); }
  if (hi - lo < 1e-9) { hi += 0.5; lo -= 0.5; }
  const n = Math.max(xmin, ...series.map((s) => s.length - 1));
  const X = (i) => l + ((w - l - r) * i) / n, Y = (v) => t + ((h - t - b) * (hi - tf(v))) / (hi - lo);
  ctx.strokeStyle = "#ccc"; ctx.lineWidth = 1;
  ctx.strokeRect(l, t, w - l - r, h - t - b);
  const ticks = log ? Array.from({ length: hi - lo + 1 }, (_, k) => lo + k) : [lo, (lo + hi) / 2, hi];
  const step = Math.ceil(ticks.length / 5);
  ticks.forEach((v, k) => {
    if (k % step) return;
    const y = t + ((h - t - b) * (hi - v)) / (hi - lo);
    ctx.fillStyle = "#555";
    ctx.fillText(log ? `1e${v}` : v.toFixed(2), 2, y + 4);
    ctx.beginPath(); ctx.moveTo(l, y); ctx.lineTo(w - r, y); ctx.stroke();
  });
  ctx.fillText("0", l - 3, h - 5); ctx.fillText(`${n} steps`, w - r - 48, h - 5);
  ctx.lineWidth = 1.5;
  series.forEach((s, k) => {
    ctx.strokeStyle = colors[k % colors.length];
    ctx.beginPath();
    const stride = Math.max(1, Math.ceil(s.length / 1000));     // at most ~1000 points drawn
    for (let i = 0; i < s.length; i += stride) (i ? ctx.lineTo(X(i), Y(s[i])) : ctx.moveTo(X(i), Y(s[i])));
    if ((s.length - 1) % stride) ctx.lineTo(X(s.length - 1), Y(s[s.length - 1]));     // and the last point
    ctx.stroke();
  });
}

function bars(canvas, values, best, title) {
  const ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height, t = 18, b = 16;
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px sans-serif"; ctx.fillStyle = "#333"; ctx.fillText(title, 6, 12);
  const bw = (w - 12) / values.length;
  values.forEach((v, k) => {
    const bh = (h - t - b) * Math.min(1, v);
    ctx.fillStyle = COLORS[k];
    ctx.globalAlpha = k === best ? 1 : 0.45;
    ctx.fillRect(6 + k * bw + 2, h - b - bh, bw - 4, bh);
    ctx.globalAlpha = 1;
    ctx.fillStyle = "#222";
    ctx.font = k === best ? "bold 12px sans-serif" : "11px sans-serif";
    ctx.fillText(String(k), 6 + k * bw + bw / 2 - 3, h - 3);
  });
}

// the colour key of the ten classes, as HTML under a canvas (swatch and digit each)
function legend(el, title) {
  el.className = "legend";
  el.textContent = title;
  COLORS.forEach((c, k) => {
    const item = document.createElement("span");
    item.className = "key";
    item.dataset.cls = String(k);
    item.innerHTML = `<i style="background:${c}"></i>${k}`;
    el.appendChild(item);
  });
}

const argmax = (a) => a.reduce((bi, v, i) => (v > a[bi] ? i : bi), 0);
function softmax(a) {
  const m = Math.max(...a), e = Array.from(a, (v) => Math.exp(v - m)), s = e.reduce((x, y) => x + y, 0);
  return e.map((v) => v / s);
}

// ---- panels and the animation loop ------------------------------------------------------------------

const SPEEDS = [["1", 1], ["5", 5], ["10", 10], ["15", 15], ["30", 30], ["60", 60], ["300", 300], ["1000", 1000],
                ["max", Infinity]];

class Panel {
  // opts: step() advances one step, reset(), render(), limit: steps after which play stops by itself (the
  // play button then reads "replay": it starts the panel again from its reset state)
  constructor(name, el, opts) {
    Object.assign(this, { name, playing: true, rate: opts.rate || 30, visible: true, steps: 0, debt: 0, frameSteps: 0,
                          playedMs: 0 }, opts);
    this.el = el;
    this.seen = [];                         // [time, steps] of the last second: the measured speed
    el.innerHTML = "";
    const button = (label, fn) => {
      const b = document.createElement("button");
      b.textContent = label; b.onclick = fn; el.appendChild(b); return b;
    };
    this.playButton = button("pause", () => {
      if (!this.playing && this.done()) { this.reset(); this.setPlaying(true); this.render(); } else this.setPlaying(!this.playing);
    });
    this.playButton.className = "play";
    button("step", () => { this.setPlaying(false); this.advance(1); this.render(); });
    button("reset", () => { this.reset(); this.setPlaying(this.playing); this.render(); });
    const speed = (this.speedMenu = document.createElement("select"));
    speed.title = "the speed to aim for";
    for (const [label, v] of SPEEDS) speed.add(new Option(`${label} steps/s`, String(v), false, v === this.rate));
    speed.onchange = () => { this.rate = Number(speed.value); };
    el.appendChild(speed);
    this.counter = document.createElement("span");
    this.counter.className = "count";
    el.appendChild(this.counter);
    this.speedo = document.createElement("span");   // the speed measured over the last second
    this.speedo.className = "rate";
    this.speedo.title = "steps computed per second, measured over the last second";
    el.appendChild(this.speedo);
    new IntersectionObserver((e) => { this.visible = e[0].isIntersecting; }).observe(el.parentElement);
  }

  done() { return Boolean(this.limit) && this.steps >= this.limit; }

  setRate(rate) { this.rate = rate; this.speedMenu.value = String(rate); }

  setPlaying(on) {
    this.playing = on;
    this.playButton.textContent = on ? "pause" : this.done() ? "replay" : "play";
    this.debt = 0;
    this.seen = [];
    this.showRate();
  }

  advance(k) {
    for (let i = 0; i < k; i++) { this.step(); this.steps++; }
    if (this.done() && this.playing) this.setPlaying(false);
    else if (this.done()) this.playButton.textContent = "replay";
  }

  showRate(now = performance.now()) {     // "… steps/s" while playing, what stopped it otherwise
    let text;
    if (!this.playing) text = this.done() ? (this.doneText ? this.doneText() : "done: the step budget is spent") : "paused";
    else if (!this.visible) text = "off screen: not computing";
    else {
      this.seen.push([now, this.steps]);
      while (this.seen.length > 2 && now - this.seen[0][0] > 1000) this.seen.shift();
      const [t0, s0] = this.seen[0];
      if (now - t0 < 200) return;           // too short a time to say
      if (now - (this.shownAt || 0) < 250) return;
      text = `${((1000 * (this.steps - s0)) / (now - t0)).toFixed(1)} steps/s`;
    }
    this.shownAt = now;
    this.speedo.textContent = text;
    this.speedo.dataset.at = String(Math.round(now));      // when it was last measured
  }

  // called every frame; runs the steps that are due (as many as fit in ~30 ms at "max"), and work a panel left
  // for later (opts.background(): true when it did some, e.g. the maze's read-out)
  tick(dt, now) {
    if (this.background && this.visible && this.background()) this.render();
    if (!this.playing || !this.visible) { if (this.playing) this.showRate(now); return; }
    const t0 = performance.now(), before = this.steps;
    this.playedMs += dt;
    if (this.rate === Infinity) {
      do this.advance(1); while (this.playing && performance.now() - t0 < 30);
    } else {
      this.debt = Math.min(this.debt + (dt * this.rate) / 1000, Math.max(4, this.rate / 15));
      let k = Math.floor(this.debt);
      this.debt -= k;
      while (k-- > 0 && this.playing && performance.now() - t0 < 40) this.advance(1);
    }
    this.frameSteps = this.steps - before;
    this.render();
    if (this.playing) this.showRate(now);
  }
}

const panels = {};
let last = performance.now();
function frame(now) {
  const dt = Math.min(now - last, 100);
  last = now;
  for (const p of Object.values(panels)) p.tick(dt, now);
  requestAnimationFrame(frame);
}

// ---- the pad: a grid of intensities in [0, 1], drawn with a soft round brush --------------------------

const pad = { N: 28, grid: new Float32Array(28 * 28), listeners: [], endListeners: [] };

function stamp(cx, cy, erase) {
  const N = pad.N, r0 = erase ? 2.2 : 0.7, r1 = erase ? 3.2 : 1.7;
  for (let y = Math.max(0, Math.floor(cy - r1)); y < Math.min(N, Math.ceil(cy + r1)); y++)
    for (let x = Math.max(0, Math.floor(cx - r1)); x < Math.min(N, Math.ceil(cx + r1)); x++) {
      const d = Math.hypot(x + 0.5 - cx, y + 0.5 - cy), v = Math.min(1, Math.max(0, (r1 - d) / (r1 - r0)));
      const i = y * N + x;
      pad.grid[i] = erase ? Math.min(pad.grid[i], 1 - v) : Math.max(pad.grid[i], v);
    }
}

function padChanged(end) {
  renderPad();
  for (const f of pad.listeners) f();
  if (end) for (const f of pad.endListeners) f();
}

function renderPad() {
  paint($("pad"), pad.N, pad.N, (i, px) => { px[0] = px[1] = px[2] = Math.round(255 * pad.grid[i]); });
}

function setupPad() {
  const canvas = $("pad");
  let lastPt = null, erasing = false;
  const cell = (e) => {
    const r = canvas.getBoundingClientRect();
    return [((e.clientX - r.left) / r.width) * pad.N, ((e.clientY - r.top) / r.height) * pad.N];
  };
  const strokeTo = (p) => {
    const steps = lastPt ? Math.ceil(Math.hypot(p[0] - lastPt[0], p[1] - lastPt[1]) / 0.3) : 0;
    for (let s = 1; s <= steps; s++)
      stamp(lastPt[0] + ((p[0] - lastPt[0]) * s) / steps, lastPt[1] + ((p[1] - lastPt[1]) * s) / steps, erasing);
    stamp(p[0], p[1], erasing);
    lastPt = p;
    padChanged(false);
  };
  canvas.addEventListener("contextmenu", (e) => e.preventDefault());
  canvas.addEventListener("pointerdown", (e) => {
    canvas.setPointerCapture(e.pointerId);
    erasing = e.button === 2 || document.querySelector("input[name=tool]:checked").value === "erase";
    lastPt = null;
    strokeTo(cell(e));
  });
  canvas.addEventListener("pointermove", (e) => { if (lastPt) strokeTo(cell(e)); });
  const end = () => { if (lastPt) { lastPt = null; padChanged(true); } };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  $("pad-clear").onclick = () => { pad.grid.fill(0); padChanged(true); };
  $("pad-size").onchange = (e) => {
    pad.N = Number(e.target.value);
    pad.grid = new Float32Array(pad.N * pad.N);
    padChanged(true);
  };
  if (BUNDLE.digits) {                    // ten MNIST test digits; a larger pad is filled tile by tile
    const d = DeqNCA.decode(BUNDLE.digits).data;
    const inkIn = (ox, oy) => {
      let s = 0;
      for (let y = 0; y < 28; y++) for (let x = 0; x < 28; x++) s += pad.grid[(oy + y) * pad.N + ox + x];
      return s;
    };
    for (let k = 0; k < 10; k++) {
      const b = document.createElement("button");
      b.textContent = String(k);
      b.title = `an MNIST test image of a ${k}`;
      b.onclick = () => {
        const N = pad.N, tiles = [];
        for (let ty = 0; ty + 28 <= N; ty += 28) for (let tx = 0; tx + 28 <= N; tx += 28) tiles.push([tx, ty, inkIn(tx, ty)]);
        const [ox, oy] = tiles.reduce((best, t) => (t[2] < best[2] ? t : best));   // the emptiest tile
        for (let y = 0; y < 28; y++) for (let x = 0; x < 28; x++)
          pad.grid[(oy + y) * N + ox + x] = d[k * 784 + y * 28 + x] / 255;
        padChanged(true);
      };
      $("examples").appendChild(b);
    }
    $("examples").insertAdjacentText("afterbegin", "MNIST examples:");
  }
  renderPad();
}

// ---- panel 1: the per-cell model ------------------------------------------------------------------------

function setupCells() {
  const m = models.cell;
  if (!m) {
    $("cell-missing").hidden = false;
    for (const id of ["cells", "cell-res", "cell-votes", "cell-controls"]) $(id).hidden = true;
    return;
  }
  legend($("cell-legend"), "");
  $("cell-legend").title = "the colour of each class";
  let z, next, rel = [], cell = null, vote = null, frac = null;
  const bind = () => { m.bind(Float32Array.from(pad.grid), pad.N, pad.N); };
  const read = () => {
    cell = m.cellLogits(z);
    vote = m.inkVote(cell);
    const K = m.config.classes, n = pad.N * pad.N, counts = new Array(K).fill(0);
    let ink = 0;
    for (let i = 0; i < n; i++) if (pad.grid[i] > 0.1) { ink++; counts[argmax(cell.subarray(i * K, i * K + K))]++; }
    frac = counts.map((c) => c / Math.max(ink, 1));
  };
  // a model trained through a fixed number of rollout steps is a transient: it restarts from noise when
  // the drawing changes and stops at that number; an equilibrium model keeps its state (path independence)
  const transient = m.config.solver === "rollout", horizon = m.config.solver_kw.max_iter;
  $("cell-note").textContent = transient
    ? `This model was trained through ${horizon} rollout steps: it restarts from noise when the drawing changes and stops at step ${horizon}.`
    : `This model was trained to its fixed point: its state carries on when the drawing changes.`;
  const p = (panels.cell = new Panel("cell", $("cell-controls"), {
    rate: 15, limit: transient ? horizon : 150,
    reset() { bind(); z = m.noise(nextRand()); next = new Float32Array(z.length); rel = []; this.steps = 0; },
    step() { rel.push(m.step(z, next)); [z, next] = [next, z]; },
    render() {
      read();                               // the read-out only for what is shown
      const K = m.config.classes;
      paint($("cells"), pad.N, pad.N, (i, px) => {
        const c = RGB[argmax(cell.subarray(i * K, i * K + K))], a = pad.grid[i] > 0.1 ? 1 : 0.22;
        for (let j = 0; j < 3; j++) px[j] = Math.round(255 * (1 - a) + c[j] * a);
      });
      plot($("cell-res"), [rel], { log: true, title: "relative residual ‖f(z)−z‖/‖f(z)‖" });
      bars($("cell-votes"), frac, argmax(vote), `ink cells voting for each class; answer ${argmax(vote)}`);
      this.counter.textContent = `step ${this.steps}`;
    },
    state: () => { read(); return { z, x: m.x, N: pad.N, cell, vote }; },
  }));
  p.reset();
  pad.listeners.push(() => {
    if (transient || m.H !== pad.N) { p.reset(); p.setPlaying(true); p.render(); return; }   // from noise
    bind(); p.render();
    if (p.steps >= p.limit) { p.steps = 0; p.setPlaying(true); }
  });
}

// ---- panel 2: essay's model against the equilibrium model ----------------------------------------------------

function setupDuel() {
  const names = ["essay", "equilibrium"].filter((k) => models[k]);
  const titles = { essay: "essay's model: z ← z + tanh(…)", equilibrium: "equilibrium model: contractive rule" };
  const side = {};
  for (const name of names) {
    const el = document.createElement("div");
    el.className = "model";
    el.innerHTML = `<h3>${titles[name]}</h3><canvas class="grid state"></canvas><div class="answer"></div>
      <canvas class="plot" width="300" height="130"></canvas><canvas class="plot" width="300" height="130"></canvas>
      <div></div>`;
    $("duel-row").appendChild(el);
    legend(el.lastElementChild, "lines:");
    const [state, res, probs] = el.querySelectorAll("canvas");
    side[name] = { m: models[name], el, state, res, probs, answer: el.querySelector(".answer") };
  }
  let z0 = null;
  const p = (panels.duel = new Panel("duel", $("duel-controls"), {
    rate: 10, limit: 160,
    reset() {
      const x = Float32Array.from(pad.grid), N = pad.N;
      this.steps = 0;
      for (const name of names) {
        const s = side[name];
        s.m.bind(x, N, N);
        if (name === names[0]) z0 = s.m.noise(nextRand());   // both start from the same noise
        s.z = Float32Array.from(z0); s.next = new Float32Array(z0.length);
        s.rel = []; s.prob = [softmax(s.m.logits(s.z))];
      }
    },
    step() {
      for (const name of names) {
        const s = side[name];
        s.rel.push(s.m.step(s.z, s.next));
        [s.z, s.next] = [s.next, s.z];
        s.prob.push(softmax(s.m.logits(s.z)));
      }
    },
    render() {
      for (const name of names) {
        const s = side[name], C = s.m.C, N = s.m.H;
        // channels 0-2 as RGB, each standardised over the cells: the pattern, not the scale
        const mean = [0, 0, 0], sd = [0, 0, 0], n = N * N;
        for (let i = 0; i < n; i++) for (let j = 0; j < 3; j++) mean[j] += s.z[i * C + j] / n;
        for (let i = 0; i < n; i++) for (let j = 0; j < 3; j++) sd[j] += (s.z[i * C + j] - mean[j]) ** 2 / n;
        paint(s.state, N, N, (i, px) => {
          for (let j = 0; j < 3; j++) px[j] = Math.round(127.5 + 127.5 * Math.tanh((s.z[i * C + j] - mean[j]) / (Math.sqrt(sd[j]) + 1e-6)));
        });
        const last = s.prob[s.prob.length - 1], k = argmax(last);
        s.answer.innerHTML = `step ${this.steps}: says <b style="color:${COLORS[k]}">${k}</b> (p = ${last[k].toFixed(2)})`;
        s.answer.dataset.cls = String(k);
        plot(s.res, [s.rel], { log: true, title: "relative residual" });
        const perClass = Array.from({ length: 10 }, (_, c) => s.prob.map((q) => q[c]));
        plot(s.probs, perClass, { colors: COLORS, ymin: 0, ymax: 1, title: "probability of each class" });
      }
      this.counter.textContent = `step ${this.steps}`;
    },
    state: () => ({ x: Array.from(pad.grid), N: pad.N, z0: Array.from(z0), steps: p.steps,
                    answers: Object.fromEntries(names.map((n) => [n, Number(side[n].answer.dataset.cls)])) }),
  }));
  p.reset();
  pad.endListeners.push(() => { const play = p.playing || p.steps >= p.limit; p.reset(); p.setPlaying(play); p.render(); });
}

// ---- panel 3: the lizard -----------------------------------------------------------------------------------

function rgbOnWhite(z, C, i, px) {          // premultiplied RGBA over white (grow/replay.py)
  const a = Math.min(1, Math.max(0, z[i * C + 3]));
  for (let j = 0; j < 3; j++) px[j] = Math.round(255 * Math.min(1, Math.max(0, 1 - a + z[i * C + j])));
}

function setupGrow() {
  // the equilibrium rule first, and chosen: the page is about equilibria (BPTT is the comparison)
  const names = Object.keys(models).filter((k) => models[k] instanceof DeqNCA.GrowModel)
    .sort((a, b) => (b === "lizard-equilibrium") - (a === "lizard-equilibrium"));
  const label = { "lizard-bptt": "trained by BPTT", "lizard-equilibrium": "trained as an equilibrium" };
  for (const n of names) {
    const o = new Option(label[n] || n, n);
    o.title = `shipped model ${BUNDLE.models[n].source}`;
    $("grow-model").add(o);
  }
  let m, z, next, rel, loss, rand;
  const target = () => m.target.data;
  const l2 = () => {                       // target_loss: mean squared error of RGBA against the target
    const { H, W, C } = m, t = target(), n = H * W;
    let s = 0;
    for (let c = 0; c < 4; c++) for (let i = 0; i < n; i++) { const e = z[i * C + c] - t[c * n + i]; s += e * e; }
    return s / (4 * n);
  };
  const p = (panels.grow = new Panel("grow", $("grow-controls"), {
    rate: 30,
    reset() {
      m = models[$("grow-model").value];
      z = m.seed(); next = new Float32Array(z.length); rel = []; loss = [l2()]; rand = nextRand(); this.steps = 0;
      const t = target(), n = m.H * m.W;
      paint($("grow-target"), m.W, m.H, (i, px) => {
        const a = Math.min(1, Math.max(0, t[3 * n + i]));
        for (let j = 0; j < 3; j++) px[j] = Math.round(255 * Math.min(1, Math.max(0, 1 - a + t[j * n + i])));
      });
    },
    step() { rel.push(m.step(z, next, m.fireMask(rand))); [z, next] = [next, z]; loss.push(l2()); },
    render() {
      paint($("lizard"), m.W, m.H, (i, px) => rgbOnWhite(z, m.C, i, px));
      plot($("grow-res"), [rel.slice(-300)], { log: true, title: "relative residual (last 300 steps)" });
      plot($("grow-loss"), [loss.slice(-300)], { log: true, title: "L2 to the target (last 300 steps)" });
      this.counter.textContent = `step ${this.steps}`;
    },
  }));
  $("grow-model").onchange = () => { p.reset(); p.render(); };
  const canvas = $("lizard");
  let down = false;
  const erase = (e) => {                   // a disc of radius 6 cells, all channels zeroed
    const r = canvas.getBoundingClientRect(), cx = ((e.clientX - r.left) / r.width) * m.W, cy = ((e.clientY - r.top) / r.height) * m.H;
    for (let y = 0; y < m.H; y++) for (let x = 0; x < m.W; x++)
      if (Math.hypot(x + 0.5 - cx, y + 0.5 - cy) < 6) z.fill(0, (y * m.W + x) * m.C, (y * m.W + x + 1) * m.C);
    p.render();
  };
  canvas.addEventListener("pointerdown", (e) => { down = true; canvas.setPointerCapture(e.pointerId); erase(e); });
  canvas.addEventListener("pointermove", (e) => { if (down) erase(e); });
  canvas.addEventListener("pointerup", () => { down = false; });
  p.reset();
}

// ---- panel 4: the maze --------------------------------------------------------------------------------------
// The recall models (DT-recall, the DEQs) read out every step; the max-plus models (geodesic, trace) show their
// floods and traces while they run, many steps per frame, stop at the fixed point (a step that changes nothing)
// and read out once there, the read-out spread over frames (it is the slow part on a large maze).

const isMaze = (m) => m instanceof DeqNCA.MazeModel || m instanceof DeqNCA.ExactMaze;
const MAZE_LABELS = { "maze-dt": "DT-recall", "maze-deq-res": "DEQ + fixed-point penalty", "maze-deq": "DEQ",
                      "maze-geodesic": "geodesic equilibrium", "maze-trace": "trace equilibrium (loops)" };
const RECALL_MAX_SIZE = 33;     // a recall step at 59 (a 124x124 image, five 32-channel convolutions) takes seconds
const READOUT_MS = 25;          // read-out work per frame

function setupMaze() {
  const names = Object.keys(models).filter((k) => isMaze(models[k]));
  for (const n of names) {
    const o = new Option(MAZE_LABELS[n] || n, n);
    o.title = `shipped model ${BUNDLE.models[n].source}`;
    $("maze-model").add(o);
  }
  const first = ["maze-trace", "maze-geodesic"].find((n) => models[n]);   // an equilibrium solver when there is one
  if (first) $("maze-model").value = first;
  let maze, img, m, z, next, rel, pred, solvedAt, fixedAt, readout, progress;
  const exact = () => m instanceof DeqNCA.ExactMaze;
  const newMaze = () => {
    maze = DeqNCA.generateMaze(Number($("maze-size").value), nextRand(), Number($("maze-loops").value));
    img = DeqNCA.mazeImage(maze);
  };
  const blue = (px) => { px[0] = 38; px[1] = 89; px[2] = 255; };
  const p = (panels.maze = new Panel("maze", $("maze-controls"), {
    rate: 30,
    reset() {
      m = models[$("maze-model").value];
      m.bind(img.x, img.H, img.W);
      z = m.init(); next = new Float32Array(z.length); rel = []; this.steps = 0; this.playedMs = 0;
      solvedAt = fixedAt = readout = null; progress = 0;
      this.limit = exact() ? m.stepsBound() : Math.max(100, 4 * img.H);    // rule.steps_bound; default_max_iters
      pred = exact() ? null : m.predict(z).path;
    },
    step() {
      const r = m.step(z, next);
      rel.push(r); [z, next] = [next, z];
      if (exact()) {
        if (r === 0) { fixedAt = this.steps; this.limit = this.steps + 1; readout = m.readout(z); }   // z is f(z)
        return;
      }
      pred = m.predict(z).path;
      const ok = pred.every((v, i) => v === img.path[i]);
      if (ok && solvedAt === null) solvedAt = this.steps + 1;
      if (!ok) solvedAt = null;
    },
    background() {                          // the read-out at the fixed point, READOUT_MS per frame
      if (!readout) return false;
      const t0 = performance.now();
      let r;
      do r = readout.next(); while (!r.done && performance.now() - t0 < READOUT_MS);
      if (r.done) { pred = r.value.path; readout = null; } else progress = r.value;
      return true;
    },
    render() {
      const cells = exact() && m.cells, S = img.W;
      const cellOf = (i) => (cells ? ((Math.floor(i / S) - 1) >> 1) * m.w + (((i % S) - 1) >> 1) : i);
      paint($("maze-canvas"), img.W, img.H, (i, px) => {
        for (let j = 0; j < 3; j++) px[j] = Math.round(255 * img.x[3 * i + j]);
        if (img.x[3 * i] !== img.x[3 * i + 1]) return;          // start (green) and goal (red) stay visible
        if (pred) { if (pred[i]) blue(px); return; }
        if (!img.x[3 * i]) return;                              // a wall
        if (m.traced(z, cellOf(i))) { px[0] = 150; px[1] = 175; px[2] = 255; }   // a trace has passed
        else if (m.reached(z, cellOf(i))) { px[0] = 255; px[1] = 236; px[2] = 170; }   // a flood has
      });
      plot($("maze-res"), [rel], { log: true, title: "relative residual" });
      const st = $("maze-status"), wanted = img.path.reduce((a, b) => a + b, 0);
      const answer = () => {
        const got = pred.reduce((a, b) => a + b, 0);
        return pred.every((v, i) => v === img.path[i]) ? "the read-out's path is exactly the solution"
          : `the read-out's path is not the solution (${got} path pixels, ${wanted} in the solution)`;
      };
      if (!exact()) {
        st.dataset.phase = solvedAt !== null ? "solved" : "running";
        st.textContent = solvedAt !== null
          ? `the predicted path is exactly the solution (since step ${solvedAt})`
          : `not solved yet (${pred.reduce((a, b) => a + b, 0)} path pixels predicted, ${wanted} in the solution)`;
      } else {
        const speed = `${this.frameSteps} steps per frame, ${this.steps} steps in ${(this.playedMs / 1000).toFixed(2)} s`;
        if (fixedAt === null) {
          st.dataset.phase = "running";
          st.textContent = `the floods and traces are spreading (yellow: reached by a flood, light blue: by a trace); ${speed}`;
        } else {
          st.dataset.phase = pred ? "done" : "reading";
          st.textContent = `fixed point reached after ${fixedAt} steps (${speed}): ` +
            (pred ? answer() : `reading out the path, ${Math.round(100 * progress)}%`);
        }
      }
      this.counter.textContent = `step ${this.steps} (budget ${this.limit})`;
    },
    doneText: () => (fixedAt !== null ? "done: at the fixed point" : "done: the step budget is spent"),
    state: () => ({ maze, img, m, z, pred, fixedAt, rel }),
  }));
  const sizes = () => {                     // the recall models only up to RECALL_MAX_SIZE: their steps are slow
    const sel = $("maze-size"), recall = !(models[$("maze-model").value] instanceof DeqNCA.ExactMaze);
    for (const o of sel.options) o.disabled = recall && Number(o.value) > RECALL_MAX_SIZE;
    if (sel.selectedOptions[0].disabled) { sel.value = String(RECALL_MAX_SIZE); return true; }
    return false;
  };
  const fresh = () => { newMaze(); p.reset(); p.setPlaying(true); p.render(); };
  const pick = () => {                      // the max-plus models run as fast as they go
    p.setRate(models[$("maze-model").value] instanceof DeqNCA.ExactMaze ? Infinity : 30);
    if (sizes()) fresh(); else { p.reset(); p.setPlaying(true); p.render(); }
  };
  $("maze-new").onclick = fresh;
  $("maze-size").onchange = fresh;
  $("maze-loops").onchange = fresh;
  $("maze-model").onchange = pick;
  sizes();
  p.setRate(models[$("maze-model").value] instanceof DeqNCA.ExactMaze ? Infinity : 30);
  newMaze();
  p.reset();
}

// ---- the test hook: in-page results for given inputs, initial states and masks -----------------------------

window.deqncaTest = {
  models: () => Object.keys(models),
  // Arrays travel as base64 (float32 or uint8 bytes): x, z0 channel-first as PyTorch's (z0 null: the
  // model's own start); fire (grow only): steps*H*W bytes of 0/1, the cells that update at each step
  // (null: the expected map). Returns the state after `steps` (channel-first float32, base64) and more.
  // `name`: an exported model, or a model spec as export.py writes them. A max-plus maze model's state lives on
  // its grid (h x w: the image's, or the layout's for the trace rule); untilFixed: stop at the first step that
  // changes nothing (out.fixedAt: the steps after which the state is the fixed point).
  run(name, { x = null, H, W, z0 = null, steps = 1, fire = null, untilFixed = false }) {
    const m = DeqNCA.load(typeof name === "string" ? BUNDLE.models[name] : name);   // the panels keep theirs
    const f32 = (s) => new Float32Array(DeqNCA.fromBase64(s).buffer);
    let C, z, h = H, w = W;
    if (m instanceof DeqNCA.GrowModel) {
      ({ H, W, C } = m);
      [h, w] = [H, W];
      z = z0 ? DeqNCA.chwToHwc(f32(z0), C, H, W) : m.seed();
    } else {
      m.bind(DeqNCA.chwToHwc(f32(x), isMaze(m) ? 3 : m.config.in_channels, H, W), H, W);
      C = m.C;
      if (m instanceof DeqNCA.ExactMaze) ({ h, w } = m);
      z = z0 ? DeqNCA.chwToHwc(f32(z0), C, h, w) : m.init();
    }
    const masks = fire ? DeqNCA.fromBase64(fire) : null, rel = [];
    let next = new Float32Array(z.length);
    for (let t = 0; t < steps; t++) {
      rel.push(m.step(z, next, masks ? masks.subarray(t * H * W, (t + 1) * H * W) : null));
      if (untilFixed && rel[t] === 0) break;
      [z, next] = [next, z];
    }
    const out = { z: DeqNCA.toBase64(DeqNCA.hwcToChw(z, C, h, w)), rel, fixedAt: rel.indexOf(0) };
    if (m instanceof DeqNCA.MnistModel) {
      out.logits = Array.from(m.logits(z));
      if (m.config.readout === "cell") {
        const cell = m.cellLogits(z);
        out.cell = DeqNCA.toBase64(DeqNCA.hwcToChw(cell, m.config.classes, H, W));
        out.vote = Array.from(m.inkVote(cell));
      }
    }
    if (isMaze(m)) {
      const { path, logits } = m.predict(z);
      Object.assign(out, { path: DeqNCA.toBase64(path), logits: DeqNCA.toBase64(DeqNCA.hwcToChw(logits, 2, H, W)) });
    }
    if (m instanceof DeqNCA.ExactMaze) out.Z = m.Z;
    return out;
  },
  pauseAll() { for (const p of Object.values(panels)) p.setPlaying(false); },
  panelSteps(name, k) { const p = panels[name]; p.setPlaying(false); p.advance(k); p.render(); return p.steps; },
  duel: () => panels.duel.state(),
  cells: () => {                              // the per-cell panel now: pad, vote, state (channels-last)
    const s = panels.cell.state();
    return { x: Array.from(s.x), N: s.N, vote: Array.from(s.vote), z: DeqNCA.toBase64(s.z) };
  },
  maze(size, seed, loops = 0) {
    const mz = DeqNCA.generateMaze(size, DeqNCA.rng(seed), loops), img = DeqNCA.mazeImage(mz);
    return { side: mz.side, layout: Array.from(mz.layout), x: DeqNCA.toBase64(DeqNCA.hwcToChw(img.x, 3, img.H, img.W)), H: img.H };
  },
  mazePanel() {                               // the maze panel now: its maze, model, state and answer
    const { maze, img, m, z, pred, fixedAt, rel } = panels.maze.state(), st = document.getElementById("maze-status");
    return { side: maze.side, layout: Array.from(maze.layout), H: img.H, model: document.getElementById("maze-model").value,
             steps: panels.maze.steps, fixedAt, playedMs: panels.maze.playedMs, phase: st.dataset.phase,
             status: st.textContent, residual: rel[rel.length - 1], path: pred ? DeqNCA.toBase64(pred) : null,
             z: DeqNCA.toBase64(DeqNCA.hwcToChw(z, m.C, m.h || img.H, m.w || img.W)) };
  },
  // steps/s of `what`: a model's step alone (what = a model name: MNIST models on a 28x28 digit, a
  // lizard grown for `warmup` steps first, a maze solver on a new maze of `size` with `loops`; a max-plus maze
  // model from zeros: its first `steps` steps, or with untilFixed all of them up to the fixed point), or a
  // panel's step plus one render per step (what = "panel:<name>", from where the panel is)
  bench(what, { steps = 30, warmup = 1, size = 9, loops = 0, untilFixed = false } = {}) {
    let run;
    if (what.startsWith("panel:")) {
      const p = panels[what.slice(6)];
      p.setPlaying(false);
      run = () => { p.advance(1); p.render(); };
    } else {
      const m = DeqNCA.load(BUNDLE.models[what]), rand = DeqNCA.rng(1);
      let z;
      if (m instanceof DeqNCA.GrowModel) z = m.seed();
      else if (isMaze(m)) {
        const im = DeqNCA.mazeImage(DeqNCA.generateMaze(size, rand, loops));
        m.bind(im.x, im.H, im.W);
        z = m.init();
        if (m instanceof DeqNCA.ExactMaze) {
          let next = new Float32Array(z.length), n = 0;
          const t0 = performance.now();
          for (; n < (untilFixed ? m.stepsBound() : steps); n++) {
            const r = m.step(z, next);
            [z, next] = [next, z];
            if (untilFixed && r === 0) { n++; break; }
          }
          return (1000 * n) / (performance.now() - t0);
        }
      } else {
        const d = BUNDLE.digits ? DeqNCA.decode(BUNDLE.digits).data.subarray(0, 784) : new Uint8Array(784);
        m.bind(Float32Array.from(d, (v) => v / 255), 28, 28);
        z = m.noise(rand);
      }
      let next = new Float32Array(z.length);
      run = () => { m.step(z, next, m instanceof DeqNCA.GrowModel ? m.fireMask(rand) : null); [z, next] = [next, z]; };
    }
    for (let i = 0; i < warmup; i++) run();  // lets the JIT compile the kernels (and a lizard grow)
    const t0 = performance.now();
    for (let i = 0; i < steps; i++) run();
    return (1000 * steps) / (performance.now() - t0);
  },
  ready: false,
};

setupPad();
setupCells();
setupDuel();
setupGrow();
setupMaze();
for (const p of Object.values(panels)) p.render();
window.deqncaTest.ready = true;
requestAnimationFrame(frame);
