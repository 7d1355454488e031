'use strict';
// The Tensor codec on its own: same wire layout as service_common/codec.py (dtype + shape + LE bytes).

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const protoLoader = require('@grpc/proto-loader');
const { encodeTensor, decodeTensor, toNested, PROTO_FILES, PROTO_ROOT, LOADER_OPTIONS } = require('../index.js');

test('nested arrays round-trip as FLOAT64 with the inferred shape', () => {
  const x = [[[1], [2], [3]], [[2.5], [-3.25], [1e-9]]];
  const tensor = encodeTensor(x);
  assert.equal(tensor.dtype, 'FLOAT64');
  assert.deepEqual(tensor.shape, [2, 3, 1]);
  assert.equal(tensor.raw.length, 6 * 8);
  assert.deepEqual(toNested(decodeTensor(tensor)), x);
});

test('raw bytes are little-endian regardless of the host', () => {
  const tensor = encodeTensor([1, -2], { dtype: 'FLOAT64' });
  // 1.0 and -2.0 as IEEE-754 doubles, least significant byte first.
  assert.equal(tensor.raw.toString('hex'), '000000000000f03f00000000000000c0');
  const ints = encodeTensor(Int32Array.from([1, 256]));
  assert.equal(ints.dtype, 'INT32');
  assert.equal(ints.raw.toString('hex'), '0100000000010000');
});

test('typed arrays keep their dtype and take an explicit shape', () => {
  const cases = [
    [Float32Array.from([0.5, 1.5, -2, 4]), 'FLOAT32'],
    [Float64Array.from([Math.PI, Math.E, -0, 1e300]), 'FLOAT64'],
    [Int32Array.from([-(2 ** 31), 0, 7, 2 ** 31 - 1]), 'INT32'],
    [BigInt64Array.from([-(2n ** 63n), 0n, 42n, 2n ** 63n - 1n]), 'INT64'],
  ];
  for (const [array, dtype] of cases) {
    const tensor = encodeTensor(array, { shape: [2, 2] });
    assert.equal(tensor.dtype, dtype);
    const decoded = decodeTensor(tensor);
    assert.deepEqual(decoded.shape, [2, 2]);
    assert.equal(decoded.dtype, dtype);
    assert.deepEqual(Array.from(decoded.data), Array.from(array));
  }
});

test('the encoded message survives protobuf serialization', () => {
  // grpc-js serializes through the package definition; do the same round trip by hand.
  const definition = protoLoader.loadSync(
    PROTO_FILES.map((file) => path.join(PROTO_ROOT, file)),
    LOADER_OPTIONS,
  );
  const type = definition['lstm_stack.v1.Tensor'];
  const bytes = type.serialize(encodeTensor([[1, 2, 3], [4, 5, 6]]));
  const back = type.deserialize(bytes);
  assert.equal(back.dtype, 'FLOAT64');
  assert.deepEqual(back.shape, [2, 3]);
  assert.deepEqual(toNested(back), [[1, 2, 3], [4, 5, 6]]);
});

test('the JSON values fallback decodes too', () => {
  assert.deepEqual(toNested({ dtype: 'DTYPE_UNSPECIFIED', shape: [2, 2], values: [1, 2, 3, 4] }), [
    [1, 2],
    [3, 4],
  ]);
  assert.deepEqual(toNested({ shape: [], values: [7, 8] }), [7, 8]);
});

test('bad input is rejected with a message naming expected vs received', () => {
  assert.throws(() => encodeTensor([[1, 2], [3]]), /ragged array: x\[1\] is length 1, expected length 2/);
  assert.throws(() => encodeTensor([1, 2, 3], { shape: [2, 2] }), /holds 4 values but 3 were given/);
  assert.throws(() => encodeTensor([1], { dtype: 'FLOAT16' }), /unsupported dtype FLOAT16/);
  assert.throws(
    () => decodeTensor({ dtype: 'FLOAT64', shape: [2], raw: Buffer.alloc(8) }),
    /needs 16 bytes, got 8/,
  );
  assert.throws(
    () => decodeTensor({ dtype: 'FLOAT64', shape: [1], raw: Buffer.alloc(8), values: [1] }),
    /both raw and values/,
  );
});
