// The arithmetic of deqnca's models in plain JavaScript: the same maps as the PyTorch modules, float32
// storage with float64 accumulation (the maze models and mazes: mazes.js). tests/test_web.py checks every
// model against PyTorch.
// A state is a channels-last Float32Array: channel c of cell (y, x) is z[(y * W + x) * C + c].
"use strict";

const DeqNCA = (() => {
  // ---- weights ------------------------------------------------------------------------------------

  const fromBase64 = (s) => Uint8Array.from(atob(s), (ch) => ch.charCodeAt(0));

  function toBase64(a) {            // a typed array's bytes (little-endian, as the exporter writes them)
    const u8 = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    let s = "";
    for (let i = 0; i < u8.length; i += 0x8000) s += String.fromCharCode.apply(null, u8.subarray(i, i + 0x8000));
    return btoa(s);
  }

  function decode(t) {              // {shape, data: base64} → {shape, data: Float32Array or Uint8Array}
    const bytes = fromBase64(t.data), size = t.shape.reduce((a, b) => a * b, 1);
    return { shape: t.shape, data: bytes.length === size ? bytes : new Float32Array(bytes.buffer) };
  }

  // (Cout, Cin, 3, 3) → [(ky*3 + kx)*Cin + ci]*Cout + co: the inner loop runs over output channels
  function packConv(t) {
    const [co, ci] = t.shape, w = t.data, out = new Float32Array(w.length);
    for (let o = 0; o < co; o++)
      for (let i = 0; i < ci; i++)
        for (let k = 0; k < 9; k++) out[(k * ci + i) * co + o] = w[(o * ci + i) * 9 + k];
    return out;
  }

  // (rows, cols) → (cols, rows)
  function transpose(t) {
    const [r, c] = t.shape, w = t.data, out = new Float32Array(w.length);
    for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) out[j * r + i] = w[i * c + j];
    return out;
  }

  // ---- kernels ------------------------------------------------------------------------------------

  const ACC = new Float64Array(256);

  // out = conv3x3(inp) (+ bias) (+ add), zero padding 1, cross-correlation as F.conv2d; only output rows y0..y1-1
  // if given (a long convolution done in parts). Zero inputs are skipped: after a ReLU most of them are zero.
  function conv3x3(inp, H, W, Cin, wp, Cout, bias, add, out, relu, y0 = 0, y1 = H) {
    const acc = ACC;
    for (let y = y0; y < y1; y++) {
      for (let x = 0; x < W; x++) {
        for (let co = 0; co < Cout; co++) acc[co] = bias ? bias[co] : 0;
        for (let ky = 0; ky < 3; ky++) {
          const yy = y + ky - 1;
          if (yy < 0 || yy >= H) continue;
          for (let kx = 0; kx < 3; kx++) {
            const xx = x + kx - 1;
            if (xx < 0 || xx >= W) continue;
            const ib = (yy * W + xx) * Cin;
            let wb = (ky * 3 + kx) * Cin * Cout;
            for (let ci = 0; ci < Cin; ci++, wb += Cout) {
              const v = inp[ib + ci];
              if (v === 0) continue;
              for (let co = 0; co < Cout; co++) acc[co] += v * wp[wb + co];
            }
          }
        }
        const o = (y * W + x) * Cout;
        if (add) for (let co = 0; co < Cout; co++) acc[co] += add[o + co];
        if (relu) for (let co = 0; co < Cout; co++) out[o + co] = acc[co] > 0 ? acc[co] : 0;
        else for (let co = 0; co < Cout; co++) out[o + co] = acc[co];
      }
    }
    return out;
  }

  // ‖next − z‖ / (‖next‖ + 1e-8): the relative residual of state z (solvers.py)
  function relResidual(z, next) {
    let d = 0, n = 0;
    for (let i = 0; i < z.length; i++) {
      const e = next[i] - z[i];
      d += e * e;
      n += next[i] * next[i];
    }
    return Math.sqrt(d) / (Math.sqrt(n) + 1e-8);
  }

  // ---- randomness ---------------------------------------------------------------------------------

  function rng(seed) {              // mulberry32: small, seedable, good enough for noise and masks
    let a = seed >>> 0;
    return () => {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = Math.imul(a ^ (a >>> 15), 1 | a);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  function randn(rand, n, std) {    // Box–Muller
    const z = new Float32Array(n);
    for (let i = 0; i < n; i += 2) {
      const r = Math.sqrt(-2 * Math.log(1 - rand())), a = 2 * Math.PI * rand();
      z[i] = r * Math.cos(a) * std;
      if (i + 1 < n) z[i + 1] = r * Math.sin(a) * std;
    }
    return z;
  }

  // ---- EquilibriumModel (model.py): u = ReLU(K1*x); z' = [z +] tanh(W_z*z + W_u*u + b) ------------
  // conditioning "additive" moves W_u*u outside: z' = [z +] tanh(W_z*z + b) + W_u*u. "readonly" has
  // the same value as "injection". The contractive rule's W_z arrives already rescaled (export.py).

  class MnistModel {
    constructor(spec) {
      const c = (this.config = spec.config), t = {};
      for (const k in spec.tensors) t[k] = decode(spec.tensors[k]);
      this.C = c.state_channels;
      this.K1 = packConv(t.K1_w); this.K1b = t.K1_b.data;
      this.Wu = packConv(t.W_u); this.Wz = packConv(t.W_z); this.b = t.b.data;
      this.fc1 = t.fc1_w.data; this.fc1b = t.fc1_b.data; this.fc2 = t.fc2_w.data; this.fc2b = t.fc2_b.data;
      this.hidden = t.fc1_w.shape[0];
      this.bn = t.bn_mean ? { m: t.bn_mean.data, v: t.bn_var.data, w: t.bn_w.data, b: t.bn_b.data } : null;
      this.additive = c.conditioning === "additive";
    }

    // bind the rule to input x (H*W*in_channels): what does not depend on z is computed once
    bind(x, H, W) {
      const c = this.config, n = H * W;
      this.H = H; this.W = W; this.x = x;
      const u = conv3x3(x, H, W, c.in_channels, this.K1, c.input_channels, this.K1b, null,
                        new Float32Array(n * c.input_channels), true);
      this.drive = conv3x3(u, H, W, c.input_channels, this.Wu, this.C, this.additive ? null : this.b, null,
                           new Float32Array(n * this.C), false);
      this.pre = new Float32Array(n * this.C);
    }

    noise(rand) { return randn(rand, this.H * this.W * this.C, this.config.noise_std); }

    // next = f(z); returns the relative residual of z
    step(z, next) {
      const { H, W, C } = this;
      if (this.additive) {
        conv3x3(z, H, W, C, this.Wz, C, this.b, null, this.pre, false);
        for (let i = 0; i < z.length; i++) next[i] = Math.tanh(this.pre[i]) + this.drive[i];
      } else {
        conv3x3(z, H, W, C, this.Wz, C, null, this.drive, this.pre, false);
        for (let i = 0; i < z.length; i++) next[i] = Math.tanh(this.pre[i]);
      }
      if (this.config.residual) for (let i = 0; i < z.length; i++) next[i] += z[i];
      return relResidual(z, next);
    }

    // MLP read-out of one C-vector (BatchNorm in eval mode: running statistics)
    mlp(v, off, out, outOff) {
      const C = this.C, h = this.hidden, K = this.config.classes, bn = this.bn;
      const p = this.scratch || (this.scratch = new Float64Array(C)), hid = this.hid || (this.hid = new Float64Array(h));
      for (let c = 0; c < C; c++) {
        p[c] = v[off + c];
        if (bn) p[c] = (p[c] - bn.m[c]) / Math.sqrt(bn.v[c] + this.config.bn_eps) * bn.w[c] + bn.b[c];
      }
      for (let j = 0; j < h; j++) {
        let s = this.fc1b[j];
        for (let c = 0; c < C; c++) s += this.fc1[j * C + c] * p[c];
        hid[j] = s > 0 ? s : 0;
      }
      for (let k = 0; k < K; k++) {
        let s = this.fc2b[k];
        for (let j = 0; j < h; j++) s += this.fc2[k * h + j] * hid[j];
        out[outOff + k] = s;
      }
      return out;
    }

    // global read-out: the MLP of the state's mean over cells
    logits(z) {
      const C = this.C, n = this.H * this.W, mean = new Float64Array(C);
      for (let i = 0; i < n; i++) for (let c = 0; c < C; c++) mean[c] += z[i * C + c];
      for (let c = 0; c < C; c++) mean[c] /= n;
      return this.mlp(mean, 0, new Float64Array(this.config.classes), 0);
    }

    // readout.local(z, 1): the MLP of every cell, (H*W*classes)
    cellLogits(z) {
      const n = this.H * this.W, K = this.config.classes, out = new Float32Array(n * K);
      for (let i = 0; i < n; i++) this.mlp(z, i * this.C, out, i * K);
      return out;
    }

    // readout.ink_vote: mean cell logits over the ink cells (input > 0.1), or over all if there is no ink
    inkVote(cell) {
      const n = this.H * this.W, K = this.config.classes, ci = this.config.in_channels;
      const sum = new Float64Array(K), all = new Float64Array(K);
      let ink = 0;
      for (let i = 0; i < n; i++) {
        let m = -Infinity;
        for (let c = 0; c < ci; c++) m = Math.max(m, this.x[i * ci + c]);
        for (let k = 0; k < K; k++) all[k] += cell[i * K + k];
        if (m > 0.1) { ink++; for (let k = 0; k < K; k++) sum[k] += cell[i * K + k]; }
      }
      return ink ? sum.map((s) => s / ink) : all.map((s) => s / n);
    }
  }

  // ---- Growing NCA (rules/growing.py) ---------------------------------------------------------------
  // perceive y = [z, Sobel_x*z, Sobel_y*z] per channel; Δ = W2·relu(W1·y + b1); z' = z + fire⊙Δ
  // (fire = null: the expected map z + p·Δ); z' ← z'·[maxpool(α) > thr before and after].
  // Only cells next to a live cell are computed: the rest are masked to zero anyway.

  const SOBEL = [-1, 0, 1, -2, 0, 2, -1, 0, 1].map((v) => v / 8);

  class GrowModel {
    constructor(spec) {
      const c = (this.config = spec.config), t = {};
      for (const k in spec.tensors) t[k] = decode(spec.tensors[k]);
      this.C = c.channels; this.hidden = c.hidden;
      this.W1T = transpose(t.w1); this.b1 = t.b1.data; this.W2T = transpose(t.w2);
      this.target = t.target;
      [, this.H, this.W] = t.target.shape;
    }

    seed() {                        // one live cell in the centre: alpha and hidden channels 1
      const { H, W, C } = this, z = new Float32Array(H * W * C);
      const o = (Math.floor(H / 2) * W + Math.floor(W / 2)) * C;
      for (let c = 3; c < C; c++) z[o + c] = 1;
      return z;
    }

    alphaPool(z, out) {             // 3x3 max pool of alpha (-inf padding: only cells inside count)
      const { H, W, C } = this;
      for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
        let m = -Infinity;
        for (let yy = Math.max(0, y - 1); yy <= Math.min(H - 1, y + 1); yy++)
          for (let xx = Math.max(0, x - 1); xx <= Math.min(W - 1, x + 1); xx++)
            m = Math.max(m, z[(yy * W + xx) * C + 3]);
        out[y * W + x] = m;
      }
      return out;
    }

    // next = one step from z; fire: Uint8Array (H*W) of the cells that update, or null (expected map)
    step(z, next, fire) {
      const { H, W, C, hidden } = this, n = H * W, thr = this.config.alive_threshold, p = this.config.fire_rate;
      const pre = this.alphaPool(z, new Float32Array(n)), need = new Uint8Array(n);
      for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
        if (!(pre[y * W + x] > thr)) continue;
        for (let yy = Math.max(0, y - 1); yy <= Math.min(H - 1, y + 1); yy++)
          for (let xx = Math.max(0, x - 1); xx <= Math.min(W - 1, x + 1); xx++) need[yy * W + xx] = 1;
      }
      const per = new Float64Array(3 * C), hid = new Float64Array(hidden), d = new Float64Array(C);
      next.fill(0);
      for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
        const i = y * W + x;
        if (!need[i]) continue;
        per.fill(0);
        for (let ky = 0; ky < 3; ky++) {
          const yy = y + ky - 1;
          if (yy < 0 || yy >= H) continue;
          for (let kx = 0; kx < 3; kx++) {
            const xx = x + kx - 1;
            if (xx < 0 || xx >= W) continue;
            const sx = SOBEL[ky * 3 + kx], sy = SOBEL[kx * 3 + ky], o = (yy * W + xx) * C;
            for (let c = 0; c < C; c++) {
              per[3 * c + 1] += sx * z[o + c];
              per[3 * c + 2] += sy * z[o + c];
            }
          }
        }
        for (let c = 0; c < C; c++) per[3 * c] = z[i * C + c];
        for (let j = 0; j < hidden; j++) hid[j] = this.b1[j];
        for (let k = 0; k < 3 * C; k++) {
          const v = per[k];
          if (v === 0) continue;
          const row = k * hidden;
          for (let j = 0; j < hidden; j++) hid[j] += v * this.W1T[row + j];
        }
        d.fill(0);
        for (let j = 0; j < hidden; j++) {
          const h = hid[j];
          if (!(h > 0)) continue;
          const row = j * C;
          for (let c = 0; c < C; c++) d[c] += h * this.W2T[row + c];
        }
        const f = fire ? fire[i] : p;
        for (let c = 0; c < C; c++) next[i * C + c] = z[i * C + c] + Math.fround(d[c]) * f;
      }
      const post = this.alphaPool(next, new Float32Array(n));
      for (let i = 0; i < n; i++)
        if (!(pre[i] > thr && post[i] > thr)) next.fill(0, i * C, (i + 1) * C);
      return relResidual(z, next);
    }

    fireMask(rand) {
      const n = this.H * this.W, m = new Uint8Array(n), p = this.config.fire_rate;
      for (let i = 0; i < n; i++) m[i] = rand() < p ? 1 : 0;
      return m;
    }
  }

  // ---- layouts ------------------------------------------------------------------------------------

  function chwToHwc(a, C, H, W) {
    const out = new Float32Array(C * H * W);
    for (let c = 0; c < C; c++) for (let i = 0; i < H * W; i++) out[i * C + c] = a[c * H * W + i];
    return out;
  }

  function hwcToChw(a, C, H, W) {
    const out = new (a.constructor)(C * H * W);
    for (let c = 0; c < C; c++) for (let i = 0; i < H * W; i++) out[c * H * W + i] = a[i * C + c];
    return out;
  }

  // a model of an exported spec; mazes.js adds the maze kinds
  const KINDS = { mnist: MnistModel, grow: GrowModel };

  function load(spec) {
    if (!KINDS[spec.kind]) throw new Error(`no model of kind ${spec.kind} on this page`);
    return new KINDS[spec.kind](spec);
  }

  return { decode, fromBase64, toBase64, load, KINDS, rng, randn, chwToHwc, hwcToChw, conv3x3, packConv, relResidual,
           MnistModel, GrowModel };
})();
