/**
 * A uint8 pixel input for a converted graph: the graph takes the shards' records as they are
 * (NHWC uint8) and does the read-time work itself — an optional left-right mirror, the move to
 * NCHW (on bytes, 4x less to move than floats), the cast and the per-channel normalization
 * `x * scale[c] + offset[c]` — so the caller converts nothing in JavaScript. onnxruntime runs
 * these ops vectorized on its threads; the JavaScript loop they replace (1.6-1.9 ms per 224x224
 * image, on the main thread, which onnxruntime-node's `run` also blocks) cost about a quarter
 * of the frozen forward of MobileNetV2.
 *
 * The mirror is an `If` on a boolean graph input: a plain batch pays nothing for it, a mirrored
 * one a Gather of the columns (cheaper on the uint8 NHWC values than on floats).
 *
 * Numerics: the normalization is a float32 multiply (`DequantizeLinear`: cast and scale in one
 * pass) then an `Add`, each rounded; the JavaScript reader (`applyAugmentation`) rounds
 * `x * scale + offset` once from a double. The two agree within an ulp of `x * scale` (bit for
 * bit when every offset is 0, e.g. `normalize: unit`). Measured on MobileNetV2 at 224x224: the
 * plain prologue costs what the float graph's own input Transpose costs; the mirror's Gather
 * about 3% of a forward.
 */
import { OnnxGraph, type Dim } from './graph.js';
import { TO_NCHW } from './convert-context.js';
import { DataType } from './proto.js';

/** How the graph turns uint8 pixels into the model's float input. */
export interface PixelEncoding {
  /** Per channel: multiplier of the 0-255 value (`normalizationCoefficients(spec).scale`). */
  scale: ArrayLike<number>;
  /** Per channel: added after the multiplier. */
  offset: ArrayLike<number>;
  /** Add a boolean graph input that mirrors the batch left-right when true. Default false. */
  mirror?: boolean;
}

/** Name of the boolean graph input of a pixel graph with `mirror`. */
export const MIRROR_INPUT = 'pixels_mirror';

/**
 * Adds the pixel prologue to `graph` for the uint8 NHWC graph input `input` of `dims`
 * (`[batch, height, width, channels]`, all but the batch known). Returns the NCHW float32 value
 * the model's first layers read.
 */
export function pixelPrologue(graph: OnnxGraph, input: string, dims: Dim[], encoding: PixelEncoding): string {
  const [, , width, channels] = dims;
  if (typeof width !== 'number' || typeof channels !== 'number') throw new Error(`internal: a pixel input needs a known width and channel count, got [${dims.join(', ')}]`);
  if (encoding.scale.length !== channels || encoding.offset.length !== channels) {
    throw new Error(`internal: ${encoding.scale.length} normalization coefficients for ${channels} channels`);
  }
  let pixels = input;
  if (encoding.mirror) {
    graph.input(MIRROR_INPUT, [], 'BOOL');
    const columns = Int32Array.from({ length: width }, (_, x) => width - 1 - x);
    const mirrored = new OnnxGraph('pixels_mirrored');
    const flipped = mirrored.op('Gather', [input, mirrored.initializer('pixels_mirror_columns', columns, [width])], { axis: 2 }, 'pixels_mirror_gathered');
    mirrored.output(flipped, 'pixels_mirror_out', dims, 'UINT8');
    const plain = new OnnxGraph('pixels_plain');
    plain.output(plain.op('Identity', [input], {}, 'pixels_plain_identity'), 'pixels_plain_out', dims, 'UINT8');
    pixels = graph.op('If', [MIRROR_INPUT], { then_branch: { graph: mirrored }, else_branch: { graph: plain } }, 'pixels/oriented');
  }
  const nchw = graph.op('Transpose', [pixels], { perm: TO_NCHW }, 'pixels/to_nchw');
  const scale = Array.from(encoding.scale, Math.fround);
  const offset = Array.from(encoding.offset, Math.fround);
  // DequantizeLinear is Cast then Mul (float(x - 0) * scale[c], rounded once) in one pass.
  let value = scale.some((s) => s !== 1)
    ? graph.op('DequantizeLinear', [nchw, graph.floats(scale, [channels], 'pixels/scale'), graph.initializer('pixels/zero_point', new Uint8Array(channels), [channels])], { axis: 1 }, 'pixels/scaled')
    : graph.op('Cast', [nchw], { to: DataType.FLOAT }, 'pixels/float');
  // An add of 0 would change no value: leave it out.
  if (offset.some((o) => o !== 0)) value = graph.op('Add', [value, graph.floats(offset, [channels, 1, 1], 'pixels/offset')], {}, 'pixels/normalized');
  return value;
}
