/**
 * The static registry of stage kinds: a plain object, no import-time side effects. The
 * runtime receives it as a value and knows no kind by name.
 */
import type { StageRegistry } from '../runtime/types.js';
import { buildModel } from './build-model.js';
import { evaluate } from './evaluate.js';
import { exportStage } from './export.js';
import { fineTune } from './fine-tune.js';
import { freeze } from './freeze.js';
import { ingest } from './ingest.js';
import { loadBase } from './load-base.js';
import { preprocess } from './preprocess.js';
import { prune } from './prune.js';
import { rankBases } from './rank-bases.js';
import { select } from './select.js';
import { trainHead } from './train-head.js';
import { unfreeze } from './unfreeze.js';

export const stages = {
  ingest,
  preprocess,
  'rank-bases': rankBases,
  'load-base': loadBase,
  'build-model': buildModel,
  freeze,
  'train-head': trainHead,
  unfreeze,
  'fine-tune': fineTune,
  prune,
  evaluate,
  select,
  export: exportStage,
} as const satisfies StageRegistry;
