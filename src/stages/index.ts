/**
 * The static registry of stage kinds: a plain object, no import-time side effects. The
 * runtime receives it as a value and knows no kind by name.
 */
import type { StageRegistry } from '../runtime/types.js';
import { ingest } from './ingest.js';
import { preprocess } from './preprocess.js';

export const stages = { ingest, preprocess } as const satisfies StageRegistry;
