'use strict';
// Against live services: LSTM_STACK_SCALER_ADDRESS and LSTM_STACK_MODEL_ADDRESS must be set
// (tests/clients/test_node_client.py starts both services and runs this). Missing addresses fail.

const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const test = require('node:test');
const assert = require('node:assert/strict');
const { LstmStackClient, encodeTensor, toNested, status } = require('../index.js');

const SEED_X = [
  [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6], [5, 6, 7], [6, 7, 8], [7, 8, 9], [8, 9, 10],
  [9, 10, 11], [10, 11, 12], [20, 30, 40], [30, 40, 50], [40, 50, 60],
];
const SEED_Y = [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 50, 60, 70];
const EPOCHS = 3;

const TINY_SPEC = {
  input: { timesteps: 3, features: 1 },
  layers: [
    { lstm: { units: 4, activation: 'relu' } },
    { lstm: { units: 2, activation: 'relu' } },
  ],
  head: { task: 'REGRESSION', outputs: 1 },
};

function close(actual, expected, tolerance, label) {
  assert.ok(
    Math.abs(actual - expected) <= tolerance,
    `${label}: expected ${expected} within ${tolerance}, got ${actual}`,
  );
}

test('live services', async (t) => {
  for (const name of ['LSTM_STACK_SCALER_ADDRESS', 'LSTM_STACK_MODEL_ADDRESS']) {
    assert.ok(process.env[name], `${name} must name a running service (host:port)`);
  }
  const client = new LstmStackClient({ deadlineMs: 60_000 });
  t.after(() => client.close());
  await client.waitForReady(30_000);

  await t.test('Fit MinMax matches the hand-computed statistics and transform', async () => {
    const info = await client.fitScaler({ data: SEED_X, kind: 'MINMAX' });
    assert.ok(info.id, 'the service assigns an id');
    assert.equal(info.version, 1);
    assert.equal(info.spec.kind, 'MINMAX');
    assert.equal(info.n_samples_seen, 13);
    assert.deepEqual(info.sample_shape, [3]);
    // Column-wise over the 13 windows: min [1,2,3], max [40,50,60].
    assert.deepEqual(info.statistics.data_min, [1, 2, 3]);
    assert.deepEqual(info.statistics.data_max, [40, 50, 60]);
    const ranges = [39, 48, 57];
    info.affine.scale.forEach((s, i) => close(s, 1 / ranges[i], 1e-12, `affine.scale[${i}]`));
    info.affine.offset.forEach((o, i) => close(o, -[1, 2, 3][i] / ranges[i], 1e-12, `affine.offset[${i}]`));

    const probe = [[1, 2, 3], [40, 50, 60], [20.5, 26, 31.5], [50, 60, 70]];
    const scaled = await client.transform(info.id, probe);
    const expected = probe.map((row) => row.map((v, j) => (v - [1, 2, 3][j]) / ranges[j]));
    scaled.forEach((row, i) => row.forEach((v, j) => close(v, expected[i][j], 1e-12, `scaled[${i}][${j}]`)));

    const restored = await client.inverseTransform(info.id, scaled);
    restored.forEach((row, i) => row.forEach((v, j) => close(v, probe[i][j], 1e-9, `inverse[${i}][${j}]`)));
  });

  let modelId = null;

  await t.test('Train a tiny stacked LSTM streams started, one event per epoch, then done', async () => {
    const events = [];
    const done = await client.train(
      {
        spec: TINY_SPEC,
        supervised: { x: encodeTensor(SEED_X), y: encodeTensor(SEED_Y) },
        epochs: EPOCHS,
        batch_size: 16,
        seed: 3,
        x_scaling: { kind: 'MINMAX' },
        y_scaling: { kind: 'MINMAX' },
      },
      { onEvent: (event) => events.push(event) },
    );
    const kinds = events.map((e) => e.event);
    assert.equal(kinds[0], 'started');
    assert.equal(kinds.at(-1), 'done');
    const epochs = events.filter((e) => e.event === 'epoch').map((e) => e.epoch);
    assert.deepEqual(
      epochs.map((e) => e.epoch),
      Array.from({ length: EPOCHS }, (_, i) => i + 1),
    );
    for (const e of epochs) {
      assert.equal(e.epochs, EPOCHS);
      assert.ok(Number.isFinite(e.loss), `epoch ${e.epoch} loss ${e.loss}`);
    }
    assert.equal(done.state, 'READY');
    assert.equal(done.epochs_run, EPOCHS);
    assert.ok(done.version >= 1);
    assert.equal(done.id, events[0].started.model_id);
    assert.ok(done.x_scaler && done.x_scaler.scaler_id, 'x was scaled by the scaler service');
    assert.ok(done.y_scaler && done.y_scaler.scaler_id, 'y was scaled by the scaler service');
    modelId = done.id;
  });

  await t.test('Predict returns finite values of shape (batch, 1)', async () => {
    assert.ok(modelId, 'needs the model trained above');
    const one = await client.predict(modelId, [[50, 60, 70]]);
    assert.equal(one.model_id, modelId);
    assert.equal(one.values.length, 1);
    assert.equal(one.values[0].length, 1);
    assert.ok(Number.isFinite(one.values[0][0]), `prediction ${one.values[0][0]}`);

    // (batch, timesteps, features) works as well as (batch, timesteps) when features == 1.
    const raw = await client.call('model', 'Predict', {
      model_id: modelId,
      x: encodeTensor([[[50], [60], [70]], [[1], [2], [3]]]),
    });
    assert.ok(['FLOAT64', 'FLOAT32'].includes(raw.values.dtype), `dtype ${raw.values.dtype}`);
    assert.deepEqual(raw.values.shape, [2, 1]);
    const values = toNested(raw.values);
    assert.ok(values.flat().every(Number.isFinite));
    close(values[0][0], one.values[0][0], 1e-4, 'same window, same prediction');
  });

  await t.test('ExportModel streams an ONNX file whose size and sha256 match its info', async () => {
    assert.ok(modelId, 'needs the model trained above');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lstm-node-export-'));
    t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
    const file = path.join(dir, 'model.onnx');
    const info = await client.exportModel(modelId, file, { deadlineMs: 120_000 });
    assert.equal(info.model_id, modelId);
    assert.equal(info.format, 'EXPORT_ONNX');
    assert.deepEqual(info.output_names, ['values']);
    const bytes = fs.readFileSync(file);
    assert.equal(bytes.length, info.size_bytes);
    assert.equal(crypto.createHash('sha256').update(bytes).digest('hex'), info.sha256);
    assert.deepEqual(fs.readdirSync(dir), ['model.onnx'], 'no partial file is left behind');
    assert.equal(JSON.parse(info.metadata_json).model_id, modelId);

    await assert.rejects(client.exportModel('no-such-model-from-node', path.join(dir, 'x.onnx')), (error) => {
      assert.equal(error.code, status.NOT_FOUND);
      return true;
    });
    assert.deepEqual(fs.readdirSync(dir), ['model.onnx']);
  });

  await t.test('ImportModel streams a file and a non-Keras one is INVALID_ARGUMENT (3)', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lstm-node-import-'));
    t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
    const file = path.join(dir, 'not.keras');
    fs.writeFileSync(file, Buffer.alloc(3 * 1024 * 1024, 7));
    await assert.rejects(
      client.importModel(file, { head: { task: 'REGRESSION' }, chunkBytes: 256 * 1024 }),
      (error) => {
        assert.equal(error.code, status.INVALID_ARGUMENT);
        assert.match(error.details, /not a Keras archive/);
        assert.match(error.details, /3145728 bytes/, 'every chunk arrived');
        return true;
      },
    );
  });

  await t.test('an unknown model is NOT_FOUND (5)', async () => {
    await assert.rejects(client.predict('no-such-model-from-node', [[1, 2, 3]]), (error) => {
      assert.equal(error.code, status.NOT_FOUND);
      assert.equal(error.code, 5);
      assert.match(error.details, /no-such-model-from-node/);
      return true;
    });
  });

  await t.test('a tensor whose bytes do not match its shape is INVALID_ARGUMENT (3)', async () => {
    const bad = { dtype: 'FLOAT64', shape: [2, 3], raw: Buffer.alloc(8 * 5) };
    await assert.rejects(client.call('scaler', 'Fit', { spec: { kind: 'MINMAX' }, data: bad }), (error) => {
      assert.equal(error.code, status.INVALID_ARGUMENT);
      assert.match(error.details, /48 bytes, got 40/);
      return true;
    });
  });

  await t.test('the deadline is enforced client-side', async () => {
    await assert.rejects(client.getModel('whatever', { deadlineMs: 0 }), (error) => {
      assert.equal(error.code, status.DEADLINE_EXCEEDED);
      return true;
    });
  });
});
