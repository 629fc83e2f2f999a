/**
 * Chooses and initializes the TF.js backend, once per process.
 *
 * Everything TF.js is imported lazily: a fully cached run never computes, so the CLI must not pay
 * for loading tfjs (hundreds of milliseconds, a native binding or a wasm binary) just to start.
 * Only `import type` of tfjs appears at the top of this file.
 *
 * Where tfjs comes from matters. `@tensorflow/tfjs-node(-gpu)` depends on `@tensorflow/tfjs`,
 * which bundles its own `@tensorflow/tfjs-core` and `@tensorflow/tfjs-layers`; when its version
 * differs from ours npm nests a second copy. The engine and kernel registry are global
 * singletons shared by all copies, but classes (`Tensor`, `LayersModel`, the serialization
 * registry of layer classes) are not. So with a node backend both `useTf()` and `useLayers()`
 * return the tfjs-node module itself, which re-exports core *and* layers from the one copy the
 * native backend registered with; with wasm/cpu they return our own tfjs-core/tfjs-layers.
 * Callers must take tfjs from here instead of importing it themselves.
 */
import { createRequire } from 'node:module';
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import type * as TfCore from '@tensorflow/tfjs-core';
import type * as TfLayers from '@tensorflow/tfjs-layers';
import { InternalError, StageError } from '../runtime/errors.js';
import { registerWasmTrainingKernels } from './wasm-kernels.js';

/** What the user asked for; `auto` tries node-gpu, node, wasm, cpu in that order. */
export type BackendPreference = 'auto' | 'node-gpu' | 'node' | 'wasm' | 'cpu';

/** A concrete backend we can run on (the name shown as `backend` in the run summary). */
export type BackendName = Exclude<BackendPreference, 'auto'>;

/** The tfjs-core API as `useTf()` hands it out. */
export type Tf = typeof TfCore;
/** The tfjs-layers API as `useLayers()` hands it out. */
export type TfLayersApi = typeof TfLayers;

/** Loads a module by specifier; replaceable for tests and embedders. */
export type ModuleImporter = (specifier: string) => Promise<unknown>;
/** Returns the resolved file of a package specifier, or null when it is not installed. */
export type ModuleResolver = (specifier: string) => string | null;

/** Options of `configureBackend`. */
export interface BackendOptions {
  /** Logger for the choice ("backend skipped", "backend ready"). Default: silent. */
  log?: Logger;
  /** How optional packages are imported. Default: dynamic `import()`. */
  importModule?: ModuleImporter;
  /** How installed packages are found by `predictBackend`. Default: `require.resolve`. */
  resolveModule?: ModuleResolver;
}

/** A backend that `auto` passed over, and why. */
export interface SkippedBackend {
  /** The backend that was not used. */
  name: BackendName;
  /** One line: the import or initialization error. */
  reason: string;
}

/** The backend actually in use (`describeBackend`). */
export interface BackendInfo {
  /** Our name for it, as in the run summary. */
  name: BackendName;
  /** TF.js's own name (`tensorflow`, `wasm`, `cpu`). */
  tfBackend: string;
  /** The npm package that provided it. */
  package: string;
  /** Version of the tfjs-core instance in use. */
  coreVersion: string;
  /** Backends tried first and skipped (only with `auto`). */
  skipped: SkippedBackend[];
  /** Wasm training kernels we registered (empty when not on wasm). */
  addedKernels: string[];
}

/** A guess made without loading anything (`predictBackend`). */
export interface BackendPrediction {
  /** The backend `useTf()` would most likely pick. */
  name: BackendName;
  /** Why, in a few words. */
  reason: string;
}

const PACKAGE_OF: Record<BackendName, string> = {
  'node-gpu': '@tensorflow/tfjs-node-gpu',
  node: '@tensorflow/tfjs-node',
  wasm: '@tensorflow/tfjs-backend-wasm',
  cpu: '@tensorflow/tfjs-backend-cpu',
};
const AUTO_ORDER: BackendName[] = ['node-gpu', 'node', 'wasm', 'cpu'];
const PREFERENCES: readonly BackendPreference[] = ['auto', ...AUTO_ORDER];

interface Loaded {
  tf: Tf;
  layers: TfLayersApi;
  info: BackendInfo;
}

const require = createRequire(import.meta.url);

/** A dynamic import whose specifier TypeScript does not try to resolve (the packages are optional). */
const defaultImport: ModuleImporter = (specifier) => import(specifier);

const defaultResolve: ModuleResolver = (specifier) => {
  try {
    return require.resolve(specifier);
  } catch {
    return null;
  }
};

let preference: BackendPreference = 'auto';
let options: BackendOptions = {};
let loading: Promise<Loaded> | null = null;
let loaded: Loaded | null = null;

/**
 * Records which backend to use; nothing is loaded until `useTf()`. Call it before the first
 * `useTf()`; calling it again afterwards with another preference is a bug (one process, one
 * backend) unless the first initialization failed.
 */
export function configureBackend(pref: BackendPreference, opts: BackendOptions = {}): void {
  if (!PREFERENCES.includes(pref)) {
    throw new StageError('backend_unknown', `unknown backend "${pref}"; use one of ${PREFERENCES.join(', ')}`, { backend: pref });
  }
  if (loading && pref !== preference) {
    throw new InternalError(`configureBackend("${pref}") called after the backend was initialized as "${preference}"`);
  }
  preference = pref;
  options = { ...options, ...opts };
}

/** The recorded preference (default `auto`). */
export function backendPreference(): BackendPreference {
  return preference;
}

/**
 * Initializes the configured backend once and returns tfjs-core (on a node backend: the
 * tfjs-node module, a superset). Concurrent callers share one initialization. Throws a
 * `StageError` with code `backend_unavailable` when an explicitly requested backend cannot load.
 * Write `tf.square(t)`, not `t.square()`: tfjs-core's CommonJS build does not install chained
 * tensor methods (only the `@tensorflow/tfjs` bundle inside tfjs-node does), so they would work
 * on a node backend and throw on wasm/cpu.
 */
export async function useTf(log?: Logger): Promise<Tf> {
  return (await ensureLoaded(log)).tf;
}

/** tfjs-layers from the same tfjs instance as `useTf()`; initializes the backend if needed. */
export async function useLayers(log?: Logger): Promise<TfLayersApi> {
  return (await ensureLoaded(log)).layers;
}

/** The backend in use, or null before `useTf()` has finished. */
export function describeBackend(): BackendInfo | null {
  return loaded ? { ...loaded.info, skipped: [...loaded.info.skipped], addedKernels: [...loaded.info.addedKernels] } : null;
}

/**
 * Names the backend `useTf()` would pick, without loading anything, so that a fully cached run
 * can still report one. It checks that the packages are installed (and, for tfjs-node, that a
 * native binding was built); it cannot know whether the binding will actually load (missing
 * CUDA libraries, say), so after `useTf()` prefer `describeBackend()`.
 */
export function predictBackend(): BackendPrediction {
  if (loaded) return { name: loaded.info.name, reason: 'initialized' };
  const resolve = options.resolveModule ?? defaultResolve;
  if (preference !== 'auto') return { name: preference, reason: 'configured' };
  for (const name of AUTO_ORDER) {
    const entry = resolve(PACKAGE_OF[name]);
    if (entry === null) continue;
    if ((name === 'node' || name === 'node-gpu') && !hasNativeBinding(entry)) continue;
    return { name, reason: `${PACKAGE_OF[name]} is installed` };
  }
  return { name: 'cpu', reason: 'no faster backend installed' };
}

/**
 * Why an explicitly requested backend cannot be used, found without loading anything (so the CLI
 * can refuse `--backend node` at start rather than at the first TF.js stage); null when it looks
 * usable or the preference is `auto`. Like `predictBackend` it cannot see every failure (a
 * binding that does not load), which `useTf()` still reports as `backend_unavailable`.
 */
export function backendUnavailable(pref: BackendPreference): string | null {
  if (pref === 'auto') return null;
  const entry = (options.resolveModule ?? defaultResolve)(PACKAGE_OF[pref]);
  if (entry === null) return `${PACKAGE_OF[pref]} is not installed. ${installHint(pref)}`;
  if ((pref === 'node' || pref === 'node-gpu') && !hasNativeBinding(entry)) {
    return `${PACKAGE_OF[pref]} is installed but its native binding was not built (its install could not download libtensorflow). ${installHint(pref)}`;
  }
  return null;
}

/**
 * tfjs-node installs its native binding under `lib/napi-v*\/tfjs_binding.node`; an install
 * whose build or download failed leaves the package without it.
 */
function hasNativeBinding(entryFile: string): boolean {
  let dir = path.dirname(entryFile);
  // The entry is <pkg>/dist/index.js; walk up to the folder that holds package.json.
  for (let i = 0; i < 4 && !existsSync(path.join(dir, 'package.json')); i++) dir = path.dirname(dir);
  const lib = path.join(dir, 'lib');
  try {
    return readdirSync(lib).some((sub) => sub.startsWith('napi-v') && existsSync(path.join(lib, sub, 'tfjs_binding.node')));
  } catch {
    return false;
  }
}

async function ensureLoaded(log?: Logger): Promise<Loaded> {
  if (loaded) return loaded;
  if (!loading) {
    loading = initialize(log ?? options.log).then(
      (result) => {
        loaded = result;
        return result;
      },
      (error: unknown) => {
        // A failed start may be retried with another preference (the CLI falls back, tests switch).
        loading = null;
        throw error;
      },
    );
  }
  return loading;
}

async function initialize(log: Logger | undefined): Promise<Loaded> {
  const candidates = preference === 'auto' ? AUTO_ORDER : [preference];
  const skipped: SkippedBackend[] = [];
  for (const name of candidates) {
    try {
      const result = await loadBackend(name, log);
      result.info.skipped = skipped;
      log?.info({ backend: name, tfBackend: result.info.tfBackend, coreVersion: result.info.coreVersion, skipped }, 'backend ready');
      return result;
    } catch (error) {
      const reason = firstLine(error);
      if (preference !== 'auto') {
        throw new StageError(
          'backend_unavailable',
          `backend "${name}" is not available: ${reason}. ${installHint(name)}`,
          { backend: name, package: PACKAGE_OF[name], reason },
          { cause: error },
        );
      }
      skipped.push({ name, reason });
      log?.debug({ backend: name, reason }, 'backend skipped');
    }
  }
  // cpu is a hard dependency; getting here means the installation itself is broken.
  throw new StageError('backend_unavailable', `no TF.js backend could be loaded: ${skipped.map((s) => `${s.name}: ${s.reason}`).join('; ')}`, { skipped });
}

function installHint(name: BackendName): string {
  if (name === 'node-gpu') return 'Install it with `npm install @tensorflow/tfjs-node-gpu` (needs CUDA and cuDNN), or use backend "auto".';
  if (name === 'node') return 'Install it with `npm install @tensorflow/tfjs-node`, or use backend "auto".';
  return 'Reinstall the project dependencies (`npm install`).';
}

async function loadBackend(name: BackendName, log: Logger | undefined): Promise<Loaded> {
  const importModule = options.importModule ?? defaultImport;
  if (name === 'node' || name === 'node-gpu') {
    const tfnode = moduleValue(await importModule(PACKAGE_OF[name])) as Tf & TfLayersApi;
    if (typeof tfnode.setBackend !== 'function' || typeof tfnode.loadLayersModel !== 'function') {
      throw new Error(`${PACKAGE_OF[name]} did not export the tfjs API`);
    }
    // tfjs-node registers the "tensorflow" backend at import time; select it explicitly in case a
    // higher-priority backend was registered by someone else.
    await selectBackend(tfnode, 'tensorflow');
    await warnOnSecondCore(tfnode, importModule, log);
    return { tf: tfnode, layers: tfnode, info: info(name, tfnode, []) };
  }
  const tf = moduleValue(await importModule('@tensorflow/tfjs-core')) as Tf;
  await importModule(PACKAGE_OF[name]); // registers the backend with the shared engine
  const added = name === 'wasm' ? registerWasmTrainingKernels(tf) : [];
  await selectBackend(tf, name);
  if (name === 'cpu') {
    // The cpu backend prints a "use tfjs-node" banner to stderr on first use; we already log our choice.
    (tf.backend() as unknown as { firstUse?: boolean }).firstUse = false;
  }
  // Imported after the core so that tfjs-layers' `require('@tensorflow/tfjs-core')` is this same instance.
  const layers = moduleValue(await importModule('@tensorflow/tfjs-layers')) as TfLayersApi;
  if (added.length > 0) log?.debug({ kernels: added }, 'wasm training kernels registered');
  return { tf, layers, info: info(name, tf, added) };
}

async function selectBackend(tf: Tf, tfName: string): Promise<void> {
  // setBackend resolves false (and only warns) when the backend's factory fails.
  const ok = await tf.setBackend(tfName);
  if (!ok) throw new Error(`TF.js could not initialize the "${tfName}" backend`);
  await tf.ready();
}

/**
 * tfjs-node's nested tfjs-core shares the engine with ours but not the Tensor class; code that
 * imports @tensorflow/tfjs-core directly then builds tensors `instanceof` checks reject.
 */
async function warnOnSecondCore(tfnode: Tf, importModule: ModuleImporter, log: Logger | undefined): Promise<void> {
  try {
    const ours = moduleValue(await importModule('@tensorflow/tfjs-core')) as Tf;
    if (ours.Tensor !== tfnode.Tensor) {
      log?.warn(
        { nodeCoreVersion: tfnode.version_core, ourCoreVersion: ours.version_core },
        'tfjs-node uses its own copy of tfjs-core; take tfjs from useTf()/useLayers(), never import it directly',
      );
    }
  } catch {
    // Our tfjs-core missing is not a problem when tfjs-node brings one.
  }
}

function info(name: BackendName, tf: Tf, addedKernels: string[]): BackendInfo {
  return { name, tfBackend: tf.getBackend(), package: PACKAGE_OF[name], coreVersion: tf.version_core, skipped: [], addedKernels };
}

/** A CommonJS module imported from ESM arrives as `{ default: module.exports, ...named }`. */
function moduleValue(mod: unknown): unknown {
  const value = mod as { default?: unknown };
  return value.default !== undefined && typeof value.default === 'object' ? value.default : mod;
}

function firstLine(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.split('\n')[0].trim();
}
