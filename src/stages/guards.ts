/**
 * The checks the model-consuming stages (train-head, fine-tune, prune, evaluate, export) share:
 * one wording and one code per condition, each throwing a `StageError` whose message ends with
 * the stage's own fix.
 */
import type { LayersModel } from '@tensorflow/tfjs-layers';
import { StageError } from '../runtime/errors.js';

const shapeText = (shape: readonly (number | null)[]) => `[${shape.map((size) => size ?? '?').join(', ')}]`;

/** `model_has_no_head` unless the model records its classes (train-head has run on it). */
export function requireHead(classes: string[] | undefined, fix: string, details: Record<string, unknown> = {}): asserts classes is string[] {
  if (!classes?.length) throw new StageError('model_has_no_head', `the model has no classifier head yet: no classes recorded; ${fix}`, details);
}

/** `classes_mismatch` unless the model was trained on the shards' classes, in the same order. */
export function requireSameClasses(modelClasses: string[], dataClasses: string[], fix?: string): void {
  const same = modelClasses.length === dataClasses.length && modelClasses.every((name, i) => name === dataClasses[i]);
  if (!same) {
    throw new StageError(
      'classes_mismatch',
      `the model was trained on classes [${modelClasses.join(', ')}] but the shards have [${dataClasses.join(', ')}]${fix ? `; ${fix}` : ''}`,
      { modelClasses, dataClasses },
    );
  }
}

/**
 * `input_shape_mismatch` unless the model takes one input of [height, width, channels] whose
 * fixed sizes equal `shape` (`of`: what gives that shape, e.g. "the shards hold records of").
 */
export function requireInputShape(model: LayersModel, shape: readonly number[], of: string, fix?: string): void {
  const modelInput = (model.inputs[0]?.shape ?? []).slice(1);
  if (model.inputs.length !== 1 || modelInput.length !== 3 || modelInput.some((size, i) => size !== null && size !== shape[i])) {
    throw new StageError('input_shape_mismatch', `the model expects inputs of shape ${shapeText(modelInput)} but ${of} ${shapeText(shape)}${fix ? `; ${fix}` : ''}`, {
      modelInput,
      shape: [...shape],
    });
  }
}

/** `output_shape_mismatch` unless the model has one output with a unit per class. */
export function requireOutputPerClass(model: LayersModel, classes: string[]): void {
  const units = model.outputs[0]?.shape.at(-1);
  if (model.outputs.length !== 1 || units !== classes.length) {
    throw new StageError('output_shape_mismatch', `the model has ${units ?? 'no'} outputs but ${classes.length} classes`, { outputs: units ?? null, classes: classes.length });
  }
}
