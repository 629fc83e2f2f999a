/**
 * Decode a pretrained model bundled inside the `nsfwjs` npm package into a
 * standard TF.js `model.json` + `weights.bin` pair on disk.
 *
 *   npx tsx scripts/decode-nsfwjs.ts --out DIR [--model MobileNetV2] [--keep-quantized] [--pkg DIR]
 *
 * Why: nsfwjs (4.4.0) does not ship plain model.json/bin files. Each model lives in
 * `node_modules/nsfwjs/dist/models/<dir>/` as browserify UMD bundles (CommonJS):
 *   - `model.min.js`              -> module.exports = { modelTopology, weightsManifest[, format, ...] }
 *   - `group1-shardKofN.min.js`   -> module.exports = "<base64 of the raw shard bytes>"
 * The weightsManifest references shards by the names `group1-shardKofN`; the bytes are the
 * usual TF.js weight buffer (here: every tensor uint8-affine-quantized, {min, scale}).
 *
 * Output (DIR is created if needed):
 *   DIR/model.json        format "layers-model" (or "graph-model" for MobileNetV2Mid),
 *                         modelTopology copied verbatim, weightsManifest -> ["weights.bin"]
 *   DIR/weights.bin       all shards concatenated; dequantized to float32 by default
 *                         (like tf.io / model.save output), raw uint8 with --keep-quantized
 *   DIR/nsfwjs-info.json  input size, preprocessing, class names, provenance
 *
 * We must not commit the model, so tests call this (or `decodeNsfwjsModel`) at test time.
 * The package is a devDependency: `npm install -D nsfwjs@4.4.0`.
 */
import { createRequire } from 'node:module';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const NSFWJS_VERSION = '4.4.0';

/** Class index -> label (nsfwjs dist/esm/nsfw_classes.js). */
export const NSFW_CLASSES = ['Drawing', 'Hentai', 'Neutral', 'Porn', 'Sexy'] as const;

export interface NsfwjsModelInfo {
  /** Name used by nsfwjs (`nsfwjs.load('MobileNetV2')`). */
  name: string;
  /** Directory under node_modules/nsfwjs/dist/models. */
  dir: string;
  /** Square input size, NHWC [1, size, size, 3]. */
  size: number;
  /** tf.loadLayersModel ('layers') or tf.loadGraphModel ('graph'). */
  type: 'layers' | 'graph';
}

export const NSFWJS_MODELS: Record<string, NsfwjsModelInfo> = {
  MobileNetV2: { name: 'MobileNetV2', dir: 'mobilenet_v2', size: 224, type: 'layers' },
  MobileNetV2Mid: { name: 'MobileNetV2Mid', dir: 'mobilenet_v2_mid', size: 224, type: 'graph' },
  InceptionV3: { name: 'InceptionV3', dir: 'inception_v3', size: 299, type: 'layers' },
};

interface WeightSpec {
  name: string;
  shape: number[];
  dtype: string;
  quantization?: { dtype: string; min?: number; scale?: number };
  [k: string]: unknown;
}
interface ManifestGroup {
  paths: string[];
  weights: WeightSpec[];
}
interface BundledModelJson {
  modelTopology: Record<string, unknown>;
  weightsManifest: ManifestGroup[];
  format?: string;
  generatedBy?: string;
  convertedBy?: string;
  userDefinedMetadata?: Record<string, unknown>;
  [k: string]: unknown;
}

export interface DecodeOptions {
  outDir: string;
  /** Default 'MobileNetV2'. */
  model?: string;
  /** Path to the installed nsfwjs package (dir holding its package.json). Auto-resolved if omitted. */
  pkgDir?: string;
  /** Keep the shipped uint8 quantization in weights.bin instead of writing float32. */
  keepQuantized?: boolean;
}

export interface DecodeResult {
  modelJsonPath: string;
  weightsPath: string;
  infoPath: string;
  format: 'layers-model' | 'graph-model';
  weightBytes: number;
  paramCount: number;
  pkgDir: string;
  pkgVersion: string;
}

const INSTALL_HINT =
  `nsfwjs is not installed. Install it as a devDependency (it has no install scripts):\n` +
  `  npm install -D nsfwjs@${NSFWJS_VERSION}\n` +
  `or point to an installed copy with --pkg <dir>/node_modules/nsfwjs (or NSFWJS_DIR=...).`;

/** Find node_modules/nsfwjs by walking up from cwd and from this script's directory. */
export function resolveNsfwjsDir(explicit?: string): string {
  const isPkg = (c: string) => existsSync(join(c, 'package.json')) && existsSync(join(c, 'dist', 'models'));
  const given = explicit ?? process.env.NSFWJS_DIR;
  if (given) {
    if (isPkg(resolve(given))) return resolve(given);
    throw new Error(`${resolve(given)} is not an nsfwjs package dir (no package.json + dist/models)\n${INSTALL_HINT}`);
  }
  const candidates: string[] = [];
  const starts = [process.cwd(), dirname(fileURLToPath(import.meta.url))];
  for (const start of starts) {
    let d = resolve(start);
    for (;;) {
      candidates.push(join(d, 'node_modules', 'nsfwjs'));
      const up = dirname(d);
      if (up === d) break;
      d = up;
    }
  }
  for (const c of candidates) if (isPkg(c)) return c;
  throw new Error(INSTALL_HINT);
}

function dequantize(bytes: Uint8Array, spec: WeightSpec): Float32Array {
  const q = spec.quantization!;
  const n = spec.shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  if (q.dtype === 'uint8' || q.dtype === 'uint16') {
    if (q.min == null || q.scale == null) throw new Error(`${spec.name}: affine quantization without min/scale`);
    const src =
      q.dtype === 'uint8'
        ? bytes
        : new Uint16Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + n * 2));
    for (let i = 0; i < n; i++) out[i] = src[i] * q.scale + q.min;
    return out;
  }
  throw new Error(`${spec.name}: unsupported quantization dtype ${q.dtype} (use --keep-quantized)`);
}

const BYTES_PER: Record<string, number> = { float32: 4, int32: 4, bool: 1, uint8: 1, uint16: 2, float16: 2 };

function specBytes(spec: WeightSpec): number {
  const n = spec.shape.reduce((a, b) => a * b, 1);
  const dt = spec.quantization ? spec.quantization.dtype : spec.dtype;
  const b = BYTES_PER[dt];
  if (b == null) throw new Error(`${spec.name}: unsupported dtype ${dt}`);
  return n * b;
}

export function decodeNsfwjsModel(opts: DecodeOptions): DecodeResult {
  const modelName = opts.model ?? 'MobileNetV2';
  const info = NSFWJS_MODELS[modelName];
  if (!info) {
    throw new Error(`unknown model '${modelName}'; choose one of ${Object.keys(NSFWJS_MODELS).join(', ')}`);
  }
  const pkgDir = resolveNsfwjsDir(opts.pkgDir);
  const pkgVersion = String(JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8')).version);
  if (pkgVersion !== NSFWJS_VERSION) {
    process.emitWarning(`nsfwjs ${pkgVersion} found at ${pkgDir}; this script was written against ${NSFWJS_VERSION}`);
  }
  const modelDir = join(pkgDir, 'dist', 'models', info.dir);
  // dist/models/package.json declares "type": "commonjs"; the bundles are UMD.
  // Require by absolute path: the package's "exports" map does not expose these files.
  const req = createRequire(join(modelDir, 'model.min.js'));
  const bundled = req(join(modelDir, 'model.min.js')) as BundledModelJson;
  if (!bundled || typeof bundled !== 'object' || !bundled.modelTopology || !Array.isArray(bundled.weightsManifest)) {
    throw new Error(`${modelDir}/model.min.js did not export {modelTopology, weightsManifest}`);
  }

  // Concatenate shards in manifest order: that is the layout of the weight buffer.
  const chunks: Buffer[] = [];
  const specs: WeightSpec[] = [];
  for (const group of bundled.weightsManifest) {
    for (const p of group.paths) {
      const file = join(modelDir, `${p}.min.js`);
      if (!existsSync(file)) throw new Error(`missing shard bundle ${file}`);
      const b64 = req(file) as unknown;
      if (typeof b64 !== 'string') throw new Error(`${file} did not export a base64 string`);
      chunks.push(Buffer.from(b64, 'base64'));
    }
    specs.push(...group.weights);
  }
  const raw = Buffer.concat(chunks);
  const expected = specs.reduce((a, s) => a + specBytes(s), 0);
  if (raw.length !== expected) {
    throw new Error(`weight bytes ${raw.length} != ${expected} expected from the manifest (${modelName})`);
  }
  const paramCount = specs.reduce((a, s) => a + s.shape.reduce((x, y) => x * y, 1), 0);

  let data: Buffer = raw;
  let outSpecs: WeightSpec[] = specs;
  if (!opts.keepQuantized) {
    const parts: Buffer[] = [];
    outSpecs = [];
    let off = 0;
    for (const s of specs) {
      const nb = specBytes(s);
      const slice = raw.subarray(off, off + nb);
      off += nb;
      if (s.quantization) {
        const f = dequantize(new Uint8Array(slice.buffer, slice.byteOffset, slice.byteLength), s);
        parts.push(Buffer.from(f.buffer, f.byteOffset, f.byteLength));
        const { quantization: _q, ...rest } = s;
        outSpecs.push({ ...rest, dtype: 'float32' });
      } else {
        parts.push(slice);
        outSpecs.push(s);
      }
    }
    data = Buffer.concat(parts);
  }

  const format = info.type === 'graph' ? 'graph-model' : 'layers-model';
  const topo = bundled.modelTopology as { keras_version?: string };
  const modelJson: Record<string, unknown> = {
    format: bundled.format ?? format,
    generatedBy: bundled.generatedBy ?? (topo.keras_version ? `keras v${topo.keras_version}` : undefined),
    convertedBy: `${bundled.convertedBy ? bundled.convertedBy + '; ' : ''}nsfwjs ${pkgVersion} bundle decoded by scripts/decode-nsfwjs.ts`,
    modelTopology: bundled.modelTopology,
    weightsManifest: [{ paths: ['weights.bin'], weights: outSpecs }],
  };
  if (bundled.userDefinedMetadata) modelJson.userDefinedMetadata = bundled.userDefinedMetadata;

  mkdirSync(opts.outDir, { recursive: true });
  const modelJsonPath = join(opts.outDir, 'model.json');
  const weightsPath = join(opts.outDir, 'weights.bin');
  const infoPath = join(opts.outDir, 'nsfwjs-info.json');
  writeFileSync(weightsPath, data);
  writeFileSync(modelJsonPath, JSON.stringify(modelJson));
  writeFileSync(
    infoPath,
    JSON.stringify(
      {
        source: `nsfwjs@${pkgVersion} dist/models/${info.dir}`,
        model: info.name,
        loadWith: info.type === 'graph' ? 'tf.loadGraphModel' : 'tf.loadLayersModel',
        inputShape: [null, info.size, info.size, 3],
        preprocessing: 'RGB float32 pixel/255 -> [0,1] (nsfwjs: img.toFloat().div(255), resizeBilinear alignCorners=true)',
        classes: NSFW_CLASSES,
        weights: opts.keepQuantized ? 'uint8 affine-quantized (as shipped)' : 'float32 (dequantized from shipped uint8)',
        paramCount,
      },
      null,
      2,
    ) + '\n',
  );
  return { modelJsonPath, weightsPath, infoPath, format, weightBytes: data.length, paramCount, pkgDir, pkgVersion };
}

function parseArgs(argv: string[]): DecodeOptions & { help?: boolean } {
  const o: DecodeOptions & { help?: boolean } = { outDir: '' };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = (): string => {
      const v = argv[++i];
      if (v == null) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--out') o.outDir = val();
    else if (a === '--model') o.model = val();
    else if (a === '--pkg') o.pkgDir = val();
    else if (a === '--keep-quantized') o.keepQuantized = true;
    else if (a === '-h' || a === '--help') o.help = true;
    else throw new Error(`unknown argument ${a}`);
  }
  return o;
}

const USAGE = `usage: npx tsx scripts/decode-nsfwjs.ts --out DIR [--model ${Object.keys(NSFWJS_MODELS).join('|')}] [--keep-quantized] [--pkg node_modules/nsfwjs]`;

const isMain = process.argv[1] != null && import.meta.url === pathToFileURL(resolve(process.argv[1])).href;
if (isMain) {
  try {
    const args = parseArgs(process.argv.slice(2));
    if (args.help || !args.outDir) {
      console.log(USAGE);
      process.exit(args.help ? 0 : 2);
    }
    const r = decodeNsfwjsModel(args);
    console.log(
      `wrote ${r.modelJsonPath} (${r.format}) + ${r.weightsPath} (${(r.weightBytes / 1e6).toFixed(2)} MB, ` +
        `${r.paramCount} params) from nsfwjs ${r.pkgVersion} at ${r.pkgDir}`,
    );
  } catch (e) {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  }
}
