'use strict';
// Forecast and Backtest against live services (tests/clients/test_node_client.py starts them):
// LSTM_STACK_SCALER_ADDRESS and LSTM_STACK_MODEL_ADDRESS must be set. Missing addresses fail.

const test = require('node:test');
const assert = require('node:assert/strict');
const { LstmStackClient, encodeTensor, status } = require('../index.js');

const PERIOD = 8;
const WINDOW = PERIOD;
const HORIZON = 2;
const SERIES = Array.from({ length: 120 }, (_, t) => 20 + 5 * Math.sin((2 * Math.PI * t) / PERIOD));

function sorted(values) {
  return values.every((v, i) => i === 0 || values[i - 1] <= v);
}

test('forecast and backtest', async (t) => {
  for (const name of ['LSTM_STACK_SCALER_ADDRESS', 'LSTM_STACK_MODEL_ADDRESS']) {
    assert.ok(process.env[name], `${name} must name a running service (host:port)`);
  }
  const client = new LstmStackClient({ deadlineMs: 60_000 });
  t.after(() => client.close());
  await client.waitForReady(30_000);
  const done = await client.train({
    spec: {
      input: { timesteps: WINDOW, features: 1 },
      layers: [{ lstm: { units: 8 } }],
      head: { task: 'REGRESSION' },
    },
    series: { series: encodeTensor(SERIES), window: WINDOW, horizon: HORIZON },
    quantiles: [0.1, 0.5, 0.9],
    epochs: 3,
    batch_size: 16,
    seed: 3,
    validation_fraction: 0.2,
    x_scaling: { kind: 'MINMAX' },
    y_scaling: { kind: 'MINMAX' },
  });
  assert.equal(done.forecast.horizon, HORIZON);

  await t.test('forecast returns the point and sorted quantiles of every series', async () => {
    const histories = [SERIES.slice(0, 40), SERIES.slice(10, 50), SERIES.slice(30, 70)].map((h) => h.map((v) => [v]));
    const result = await client.forecast(done.id, histories);
    assert.equal(result.model_id, done.id);
    assert.equal(result.horizon, HORIZON);
    assert.deepEqual(result.target_columns, [0]);
    assert.deepEqual(result.levels, [0.1, 0.5, 0.9]);
    assert.equal(result.point.length, 3);
    assert.deepEqual([result.point[0].length, result.point[0][0].length], [HORIZON, 1]);
    for (let s = 0; s < 3; s += 1) {
      for (let k = 0; k < HORIZON; k += 1) {
        const levels = result.quantiles[s][k][0];
        assert.equal(levels.length, 3);
        assert.ok(sorted(levels), `series ${s} step ${k}: ${levels} are not sorted`);
        assert.equal(result.point[s][k][0], levels[1], 'the point forecast is the median');
        assert.ok(Number.isFinite(levels[1]));
      }
    }
    const shorter = await client.forecast(done.id, SERIES.slice(0, 40), { horizon: 1 });
    assert.deepEqual([shorter.point.length, shorter.point[0].length], [1, 1]);
    assert.equal(shorter.point[0][0][0], result.point[0][0][0]);
  });

  await t.test('backtest streams every window, each forecast from the rows before its origin', async () => {
    const result = await client.backtest(done.id, SERIES, { windows: 3, originStep: 5, seasonLength: PERIOD });
    assert.deepEqual(result.windows.map((w) => w.origin), [108, 113, 118]);
    assert.equal(result.summary.windows, 3);
    for (const w of result.windows) {
      for (const name of ['mae', 'rmse', 'mase', 'smape', 'coverage', 'naive_mae', 'seasonal_naive_mae']) {
        assert.ok(Number.isFinite(w.metrics[name]), `window ${w.index}: ${name} is ${w.metrics[name]}`);
      }
      assert.deepEqual(w.actual.map((row) => row[0]), SERIES.slice(w.origin, w.origin + HORIZON));
      assert.equal(w.lower.length, HORIZON);
      assert.equal(w.model_id, done.id);
      // The same forecast as Forecast from the history cut at the origin.
      const alone = await client.forecast(done.id, SERIES.slice(0, w.origin));
      assert.deepEqual(w.forecast, alone.point[0]);
    }
    const mean = result.windows.reduce((sum, w) => sum + w.metrics.mae, 0) / 3;
    assert.ok(Math.abs(result.summary.metrics.mae - mean) < 1e-9);
  });

  await t.test('bad forecasts and backtests are refused with a precise status', async () => {
    await assert.rejects(client.forecast(done.id, SERIES.slice(0, 40), { horizon: HORIZON + 1 }), (error) => {
      assert.equal(error.code, status.INVALID_ARGUMENT);
      assert.match(error.details, /horizon must be in 1\.\.2/);
      return true;
    });
    await assert.rejects(client.forecast(done.id, SERIES.slice(0, 3)), (error) => {
      assert.equal(error.code, status.INVALID_ARGUMENT);
      assert.match(error.details, /needs at least one window of 8/);
      return true;
    });
    await assert.rejects(client.backtest(done.id, SERIES, { windows: 0 }), (error) => {
      assert.equal(error.code, status.INVALID_ARGUMENT);
      assert.match(error.details, /windows must be in 1\.\.1000/);
      return true;
    });
    await assert.rejects(client.forecast(done.id, SERIES, { datasetId: 'ds-0' }), /give history or datasetId/);
  });
});
