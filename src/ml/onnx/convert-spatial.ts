/**
 * Spatial layers without weights: pooling (TF's 'same' average pooling excludes the padding,
 * ONNX's `count_include_pad=0`), global pooling, zero padding, cropping and upsampling.
 */
import { pair, paddingAttributes, spatialReason } from './convert-conv.js';
import type { LayerConverter, LayerInfo } from './convert-context.js';

function poolAttributes(info: LayerInfo) {
  const kernel = pair(info.config.poolSize, 2);
  const strides = info.config.strides === null || info.config.strides === undefined ? kernel : pair(info.config.strides, 1);
  return { kernel_shape: kernel, strides, ...paddingAttributes(info.inputShapes[0], kernel, strides, [1, 1], info.config.padding) };
}

/** `MaxPooling2D`. */
export const maxPooling2d: LayerConverter = {
  check: (info) => spatialReason(info),
  convert: (ctx, info, [x]) => ({ output: ctx.tensor(ctx.graph.op('MaxPool', [x.name], poolAttributes(info), `${info.layer.name}/max_pool`), info.outputShape) }),
};

/** `AveragePooling2D`: the mean over the window's pixels inside the image. */
export const averagePooling2d: LayerConverter = {
  check: (info) => spatialReason(info),
  convert: (ctx, info, [x]) => ({
    output: ctx.tensor(ctx.graph.op('AveragePool', [x.name], { ...poolAttributes(info), count_include_pad: 0 }, `${info.layer.name}/average_pool`), info.outputShape),
  }),
};

function globalPooling(op: 'ReduceMean' | 'ReduceMax', rank: number): LayerConverter {
  return {
    check(info) {
      if (info.inputShapes.length !== 1 || info.inputShapes[0].length !== rank) return `input must be one rank-${rank} tensor`;
      const format = info.config.dataFormat;
      if (format !== undefined && format !== null && format !== 'channelsLast') return `dataFormat '${String(format)}'`;
      return null;
    },
    // NCHW: reduce H and W; [N, steps, C]: reduce the steps.
    convert: (ctx, info, [x]) => ({ output: ctx.tensor(ctx.graph.op(op, [x.name], { axes: rank === 4 ? [2, 3] : [1], keepdims: 0 }, `${info.layer.name}/${op}`), info.outputShape) }),
  };
}

/** `GlobalAveragePooling2D` → [batch, channels]. */
export const globalAveragePooling2d = globalPooling('ReduceMean', 4);
/** `GlobalMaxPooling2D` → [batch, channels]. */
export const globalMaxPooling2d = globalPooling('ReduceMax', 4);
/** `GlobalAveragePooling1D` → [batch, channels]. */
export const globalAveragePooling1d = globalPooling('ReduceMean', 3);
/** `GlobalMaxPooling1D` → [batch, channels]. */
export const globalMaxPooling1d = globalPooling('ReduceMax', 3);

/** `[[top, bottom], [left, right]]` of ZeroPadding2D's padding / Cropping2D's cropping. */
function sides(value: unknown): [[number, number], [number, number]] {
  if (typeof value === 'number') return [[value, value], [value, value]];
  const [h, w] = value as (number | number[])[];
  const side = (v: number | number[]): [number, number] => (Array.isArray(v) ? [v[0], v[1]] : [v, v]);
  return [side(h), side(w)];
}

const INT64_LARGE = Number.MAX_SAFE_INTEGER;

/** `ZeroPadding2D` → Pad. */
export const zeroPadding2d: LayerConverter = {
  check: (info) => spatialReason(info, false),
  convert(ctx, info, [x]) {
    const [[top, bottom], [left, right]] = sides(info.config.padding);
    const pads = ctx.graph.int64s([0, 0, top, left, 0, 0, bottom, right], `${info.layer.name}/pads`);
    return { output: ctx.tensor(ctx.graph.op('Pad', [x.name, pads], { mode: 'constant' }, `${info.layer.name}/pad`), info.outputShape) };
  },
};

/** `Cropping2D` → Slice of H and W. */
export const cropping2d: LayerConverter = {
  check: (info) => spatialReason(info, false),
  convert(ctx, info, [x]) {
    const [[top, bottom], [left, right]] = sides(info.config.cropping);
    const g = ctx.graph;
    const end = (crop: number) => (crop > 0 ? -crop : INT64_LARGE);
    const sliced = g.op('Slice', [x.name, g.int64s([top, left]), g.int64s([end(bottom), end(right)]), g.int64s([2, 3])], {}, `${info.layer.name}/crop`);
    return { output: ctx.tensor(sliced, info.outputShape) };
  },
};

/** `UpSampling2D`: TF.js resizes with alignCorners and halfPixelCenters off, ONNX's 'asymmetric'. */
export const upSampling2d: LayerConverter = {
  check(info) {
    const reason = spatialReason(info, false);
    if (reason) return reason;
    const interpolation = info.config.interpolation ?? 'nearest';
    return interpolation === 'nearest' || interpolation === 'bilinear' ? null : `interpolation '${String(interpolation)}'`;
  },
  convert(ctx, info, [x]) {
    const [sh, sw] = pair(info.config.size, 2);
    const g = ctx.graph;
    const scales = g.initializer(`${info.layer.name}/scales`, Float32Array.from([1, 1, sh, sw]), [4]);
    const nearest = (info.config.interpolation ?? 'nearest') === 'nearest';
    const attributes = nearest ? { mode: 'nearest', coordinate_transformation_mode: 'asymmetric', nearest_mode: 'floor' } : { mode: 'linear', coordinate_transformation_mode: 'asymmetric' };
    return { output: ctx.tensor(g.op('Resize', [x.name, '', scales], attributes, `${info.layer.name}/resize`), info.outputShape) };
  },
};
