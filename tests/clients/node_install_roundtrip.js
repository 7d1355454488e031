'use strict';
// Run by tests/clients/test_node_package_install.py from a folder outside the repo where the packed
// @lstm-stack/client tarball was installed: one live round trip through the installed package, each
// step printed as a JSON line for the test to check. Addresses come from LSTM_STACK_*_ADDRESS.

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const client = require('@lstm-stack/client');

const WINDOW = 6;
const HORIZON = 2;
const SERIES = Array.from({ length: 60 }, (_, t) => 10 + 3 * Math.sin((2 * Math.PI * t) / WINDOW));

function emit(step, value) {
  console.log(JSON.stringify({ step, ...value }));
}

async function main() {
  emit('package', {
    main: require.resolve('@lstm-stack/client'),
    proto_root: client.PROTO_ROOT,
    protos: client.PROTO_FILES.filter((file) => fs.existsSync(path.join(client.PROTO_ROOT, file))),
  });
  const stack = new client.LstmStackClient({ deadlineMs: 60_000 });
  try {
    await stack.waitForReady(30_000);
    const scaler = await stack.fitScaler({ data: [[1, 2, 3], [40, 50, 60]], kind: 'MINMAX' });
    const scaled = await stack.transform(scaler.id, [[40, 50, 60]]);
    emit('fit', { id: scaler.id, version: scaler.version, data_max: scaler.statistics.data_max, scaled });

    const epochs = [];
    const model = await stack.train(
      {
        spec: {
          input: { timesteps: WINDOW, features: 1 },
          layers: [{ lstm: { units: 4 } }],
          head: { task: 'REGRESSION' },
        },
        series: { series: client.encodeTensor(SERIES), window: WINDOW, horizon: HORIZON },
        epochs: 2,
        batch_size: 16,
        seed: 1,
        x_scaling: { kind: 'MINMAX' },
        y_scaling: { kind: 'MINMAX' },
      },
      { onEvent: (event) => event.event === 'epoch' && epochs.push(event.epoch.epoch) },
    );
    emit('train', { id: model.id, version: model.version, state: model.state, epochs });

    const window = SERIES.slice(0, WINDOW).map((v) => [v]);
    const prediction = await stack.predict(model.id, [window]);
    emit('predict', { values: prediction.values });

    const forecast = await stack.forecast(model.id, SERIES.slice(0, 30));
    emit('forecast', { horizon: forecast.horizon, point: forecast.point });

    const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'lstm-node-export-')), 'model.onnx');
    const info = await stack.exportModel(model.id, out, { format: 'ONNX' });
    const head = fs.readFileSync(out).subarray(0, 2);
    emit('export', { size_bytes: info.size_bytes, file_bytes: fs.statSync(out).size, sha256: info.sha256, first: [...head] });
    fs.rmSync(path.dirname(out), { recursive: true, force: true });
  } finally {
    stack.close();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
