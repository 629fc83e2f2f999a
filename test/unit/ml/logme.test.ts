/**
 * LogME against two references on small fixed matrices: values precomputed with numpy by a
 * straightforward implementation (explicit A = αI + βFᵀF, `np.linalg.solve`, `slogdet`; the
 * script is in the comment below), and a grid search over (α, β) of the evidence formula
 * computed here with explicit matrices. Also: the eigensolver, and the ridge probe's
 * determinism.
 */
import { describe, expect, it } from 'vitest';
import { choleskySolve, symmetricEigen } from '../../../src/ml/linalg.js';
import { logme } from '../../../src/ml/logme.js';
import { assignFolds, linearProbe } from '../../../src/ml/probe.js';
import { createRandom } from '../../../src/data/random.js';

/** F[i][j] = sin(0.7 i + 1.3 j + 0.1 i j) + 0.05 j + 0.8·[j = i mod 3]; labels i mod 3. */
function fixture(n: number, d: number): { f: Float64Array; labels: Int32Array } {
  const f = new Float64Array(n * d);
  const labels = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    labels[i] = i % 3;
    for (let j = 0; j < d; j++) f[i * d + j] = Math.sin(0.7 * i + 1.3 * j + 0.1 * i * j) + 0.05 * j + (j === i % 3 ? 0.8 : 0);
  }
  return { f, labels };
}

/*
 * numpy 2.4.6, per class y = (labels == c):
 *   alpha, beta = 1, 1
 *   for _ in range(100):
 *     t = alpha / beta; A = alpha*I + beta*FᵀF; m = beta * solve(A, Fᵀy)
 *     lam = eigvalsh(FᵀF); gamma = Σ beta*lam/(alpha + beta*lam)
 *     m2 = m·m; res2 = ‖F m − y‖²
 *     alpha = gamma/(m2 + 1e-5); beta = (n − gamma)/(res2 + 1e-5)
 *     if |alpha/beta − t|/t <= 1e-3: break
 *   ev = d/2 log α + n/2 log β − n/2 log 2π − β/2 res2 − α/2 m2 − 1/2 slogdet(αI + βFᵀF)
 *   evidence = ev / n; LogME = mean over classes
 */
const NUMPY = {
  '12x5': { score: -0.8620982411672532, classes: [[-0.8699603345157545, 873.6065709573597, 3.029208358375896], [-0.8520963200209234, 30.544187011092916, 4.0953130718244815], [-0.8642380689650816, 10.941680511557305, 5.590682548714121]] },
  '6x8': { score: -0.870936645959412, classes: [[-0.8700902360452982, 555.0776509872777, 3.079840127235531], [-0.8712482129598834, 1935.3866618262273, 3.0046317162248366], [-0.8714714888730543, 2191.976358758151, 2.999173449909239]] },
};

/** log evidence / n at (α, β), from explicit d×d matrices (Cholesky for A⁻¹ and log|A|). */
function evidenceAt(f: Float64Array, n: number, d: number, y: Float64Array, alpha: number, beta: number): number {
  const a = new Float64Array(d * d);
  const fty = new Float64Array(d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) {
    fty[j] += f[i * d + j] * y[i];
    for (let k = 0; k < d; k++) a[j * d + k] += beta * f[i * d + j] * f[i * d + k];
  }
  for (let j = 0; j < d; j++) a[j * d + j] += alpha;
  const m = choleskySolve(a, d, fty.map((v) => beta * v), 1);
  // log|A| from the Cholesky pivots: factor again, plainly.
  const l = new Float64Array(d * d);
  let logDet = 0;
  for (let i = 0; i < d; i++) for (let j = 0; j <= i; j++) {
    let s = a[i * d + j];
    for (let k = 0; k < j; k++) s -= l[i * d + k] * l[j * d + k];
    if (i === j) { l[i * d + i] = Math.sqrt(s); logDet += 2 * Math.log(l[i * d + i]); } else l[i * d + j] = s / l[j * d + j];
  }
  let res2 = 0;
  for (let i = 0; i < n; i++) {
    let p = 0;
    for (let j = 0; j < d; j++) p += f[i * d + j] * m[j];
    res2 += (p - y[i]) ** 2;
  }
  const m2 = m.reduce((s, v) => s + v * v, 0);
  return ((d / 2) * Math.log(alpha) + (n / 2) * Math.log(beta) - (n / 2) * Math.log(2 * Math.PI) - (beta / 2) * res2 - (alpha / 2) * m2 - 0.5 * logDet) / n;
}

describe('symmetricEigen', () => {
  it('decomposes a random symmetric matrix: A V = V Λ, Vᵀ V = I, ascending values', () => {
    const n = 17;
    const random = createRandom(3);
    const a = new Float64Array(n * n);
    for (let i = 0; i < n; i++) for (let j = 0; j <= i; j++) a[i * n + j] = a[j * n + i] = random.uniform(-1, 1);
    const { values, vectors } = symmetricEigen(a, n);
    for (let j = 1; j < n; j++) expect(values[j]).toBeGreaterThanOrEqual(values[j - 1]);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
      let av = 0;
      let vv = 0;
      for (let k = 0; k < n; k++) { av += a[i * n + k] * vectors[k * n + j]; vv += vectors[k * n + i] * vectors[k * n + j]; }
      expect(av).toBeCloseTo(vectors[i * n + j] * values[j], 10);
      expect(vv).toBeCloseTo(i === j ? 1 : 0, 10);
    }
  });

  it('handles a rank-deficient matrix (zero eigenvalues)', () => {
    const v = [1, 2, 3, 4];
    const a = new Float64Array(16).map((_, k) => v[Math.floor(k / 4)] * v[k % 4]);
    const { values } = symmetricEigen(a, 4);
    expect(values[3]).toBeCloseTo(30, 10);
    for (let j = 0; j < 3; j++) expect(Math.abs(values[j])).toBeLessThan(1e-10);
  });
});

describe('logme', () => {
  for (const [name, [n, d]] of [['12x5', [12, 5]], ['6x8', [6, 8]]] as const) {
    it(`matches the numpy reference on a fixed ${name} matrix (${n > d ? 'n > d: FᵀF' : 'n < d: F Fᵀ'})`, () => {
      const { f, labels } = fixture(n, d);
      const result = logme(f, n, d, labels, 3);
      const reference = NUMPY[name];
      expect(result.score).toBeCloseTo(reference.score, 9);
      result.classes.forEach((c, i) => {
        expect(c.evidence).toBeCloseTo(reference.classes[i][0], 9);
        expect(c.alpha / reference.classes[i][1]).toBeCloseTo(1, 6);
        expect(c.beta / reference.classes[i][2]).toBeCloseTo(1, 6);
      });
    });

    it(`is the maximum of the evidence over a grid of (α, β) on the ${name} matrix`, () => {
      const { f, labels } = fixture(n, d);
      const result = logme(f, n, d, labels, 3);
      for (let c = 0; c < 3; c++) {
        const y = Float64Array.from(labels, (l) => (l === c ? 1 : 0));
        let best = -Infinity;
        // log-spaced grid: α in [1e-3, 1e5], β in [1e-2, 1e3], 81 × 61 points
        for (let i = 0; i <= 80; i++) for (let j = 0; j <= 60; j++) best = Math.max(best, evidenceAt(f, n, d, y, 10 ** (-3 + i / 10), 10 ** (-2 + j / 20)));
        // The fixed point is at the maximum (within the grid's resolution)…
        expect(Math.abs(result.classes[c].evidence - best)).toBeLessThan(2e-3);
        // …and the evidence formula there agrees with the closed form.
        expect(evidenceAt(f, n, d, y, result.classes[c].alpha, result.classes[c].beta)).toBeCloseTo(result.classes[c].evidence, 3);
      }
    });
  }

  it('scores features that carry the labels above features that do not', () => {
    const n = 60;
    const d = 6;
    const random = createRandom(9);
    const labels = Int32Array.from({ length: n }, (_, i) => i % 3);
    const noise = Float64Array.from({ length: n * d }, () => random.uniform(-1, 1));
    const signal = noise.map((v, k) => v + (k % d === labels[Math.floor(k / d)] ? 2 : 0));
    expect(logme(signal, n, d, labels, 3).score).toBeGreaterThan(logme(noise, n, d, labels, 3).score + 0.1);
  });
});

describe('linearProbe', () => {
  const n = 90;
  const d = 8;
  const random = createRandom(5);
  const labels = Int32Array.from({ length: n }, (_, i) => i % 3);
  const features = Float64Array.from({ length: n * d }, (_, k) => random.uniform(-1, 1) + (k % d === labels[Math.floor(k / d)] ? 1.5 : 0));

  it('gives the same accuracy for the same seed, and other folds for another seed', () => {
    const a = linearProbe(features, n, d, labels, 3, { seed: 7 });
    const b = linearProbe(features, n, d, labels, 3, { seed: 7 });
    expect(b).toEqual(a);
    expect(Array.from(assignFolds(labels, 5, 8))).not.toEqual(Array.from(assignFolds(labels, 5, 7)));
    expect(a.folds).toHaveLength(5);
    expect(a.accuracy).toBeGreaterThan(0.8);
    expect(a.std).toBeGreaterThanOrEqual(0);
  });

  it('stratifies: every fold holds each class equally', () => {
    const fold = assignFolds(labels, 5, 1);
    for (let k = 0; k < 5; k++) for (let c = 0; c < 3; c++) expect(labels.filter((l, i) => l === c && fold[i] === k).length).toBe(6);
  });

  it('solves the primal and the dual system alike (n < d and n > d)', () => {
    // The same 8-d features padded with zero columns to d = 100, more than a training fold's 72 samples: the dual system.
    const wide = new Float64Array(n * 100);
    for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) wide[i * 100 + j] = features[i * d + j];
    const narrow = linearProbe(features, n, d, labels, 3, { seed: 2 });
    const padded = linearProbe(wide, n, 100, labels, 3, { seed: 2 });
    expect(padded.folds).toEqual(narrow.folds);
  });

  it('is near chance on features without signal', () => {
    const noise = Float64Array.from({ length: n * d }, () => random.uniform(-1, 1));
    expect(linearProbe(noise, n, d, labels, 3).accuracy).toBeLessThan(0.6);
  });
});
