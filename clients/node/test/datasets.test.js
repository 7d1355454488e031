'use strict';
// DatasetService through the Node client against live services (LSTM_STACK_MODEL_ADDRESS and
// LSTM_STACK_SCALER_ADDRESS must be set; tests/clients/test_node_client.py starts both and runs this).

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { LstmStackClient, npyChunks, status } = require('../index.js');

/** A .npy file (format 1.0, little-endian float64, C order) holding `rows` x `columns` values. */
function writeNpy(file, rows, columns, value) {
  let header = `{'descr': '<f8', 'fortran_order': False, 'shape': (${rows}, ${columns}), }`;
  header += ' '.repeat(64 - ((10 + header.length + 1) % 64)) + '\n';
  const prefix = Buffer.alloc(10);
  Buffer.from('\x93NUMPY', 'latin1').copy(prefix, 0);
  prefix[6] = 1;
  prefix[7] = 0;
  prefix.writeUInt16LE(header.length, 8);
  const data = Buffer.alloc(rows * columns * 8);
  for (let i = 0; i < rows * columns; i += 1) data.writeDoubleLE(value(i), i * 8);
  fs.writeFileSync(file, Buffer.concat([prefix, Buffer.from(header, 'latin1'), data]));
}

test('datasets', async (t) => {
  assert.ok(process.env.LSTM_STACK_MODEL_ADDRESS, 'LSTM_STACK_MODEL_ADDRESS must name a running model service');
  const client = new LstmStackClient({ deadlineMs: 60_000 });
  t.after(() => client.close());
  await client.waitForReady(30_000);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lstm-datasets-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));

  await t.test('a .npy file is read a chunk of rows at a time', () => {
    const file = path.join(dir, 'small.npy');
    writeNpy(file, 10, 2, (i) => i);
    const chunks = [...npyChunks(file, { rowsPerChunk: 4 })];
    assert.deepEqual(chunks.map((c) => c.shape), [[4, 2], [4, 2], [2, 2]]);
    assert.equal(chunks[2].raw.readDoubleLE(8), 17);
  });

  await t.test('a CSV and the same rows as .npy upload as one dataset, then train by reference', async () => {
    const rows = 120;
    const value = (i) => Math.sin(i / 2) * (1 + (i % 2));
    const csv = path.join(dir, 'series.csv');
    const lines = ['load,temp'];
    for (let r = 0; r < rows; r += 1) lines.push(`${value(2 * r)},${value(2 * r + 1)}`);
    fs.writeFileSync(csv, `${lines.join('\n')}\n`);
    const npy = path.join(dir, 'series.npy');
    writeNpy(npy, rows, 2, value);

    const info = await client.uploadSeriesFile(csv, { rowsPerChunk: 50 });
    assert.ok(info.id.startsWith('ds-'));
    assert.deepEqual(info.columns, ['load', 'temp']);
    assert.equal(info.rows, rows);
    assert.equal(info.chunks, 1, 'small chunks are stored together in parts of about 8 MiB');
    const again = await client.uploadSeriesFile(npy, { columns: ['load', 'temp'], rowsPerChunk: 7 });
    assert.equal(again.id, info.id, 'the same data gives the same id');
    assert.ok((await client.listDatasets({ pageSize: 1 })).some((d) => d.id === info.id));

    const done = await client.train({
      spec: {
        input: { timesteps: 3, features: 2 },
        layers: [{ lstm: { units: 3 } }],
        head: { task: 'REGRESSION', outputs: 1 },
      },
      dataset: { dataset_id: info.id, target_columns: ['temp'] },
      epochs: 1,
      batch_size: 16,
    });
    assert.equal(done.dataset_id, info.id);
    assert.equal(done.n_train, rows - 3);

    await client.deleteDataset(info.id);
    await assert.rejects(client.getDataset(info.id), (error) => {
      assert.equal(error.code, status.NOT_FOUND);
      return true;
    });
  });

  await t.test('a chunk with NaN is INVALID_ARGUMENT, naming the chunk', async () => {
    const csv = path.join(dir, 'bad.csv');
    fs.writeFileSync(csv, 'a\n1\n2\nnan\n');
    await assert.rejects(client.uploadSeriesFile(csv, { rowsPerChunk: 2 }), (error) => {
      assert.equal(error.code, status.INVALID_ARGUMENT);
      assert.match(error.details, /chunk 1 series: values must be finite/);
      return true;
    });
  });
});
