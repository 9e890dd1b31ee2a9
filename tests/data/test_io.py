"""Readers and writers: every format round-trips, bad files are refused with one line naming them."""

import builtins
import json
import os

import h5py
import numpy as np
import pytest
import tifffile

from raftdvc_jax.data import augment
from raftdvc_jax.data import datasets
from raftdvc_jax.data import io


def _volume(shape=(6, 7, 8), dtype=np.float32, seed=0):
  return np.random.default_rng(seed).uniform(0, 100, shape).astype(dtype)


def _flow(shape=(6, 7, 8), seed=1):
  return np.random.default_rng(seed).normal(size=(3,) + shape).astype(np.float32)


def _one_line_naming(excinfo, path):
  message = str(excinfo.value)
  assert '\n' not in message and os.fspath(path) in message, message


def _no_temp_files(folder):
  assert not [n for n in os.listdir(folder) if '.tmp' in n], os.listdir(folder)


@pytest.mark.parametrize('name', ['v.npy', 'v.npz', 'v.tif', 'v.tiff', 'v.h5', 'v.hdf5', 'slices'])
@pytest.mark.parametrize('dtype', [np.float32, np.uint16])
@pytest.mark.parametrize('mmap', [True, False])
def test_volume_round_trip(tmp_path, name, dtype, mmap):
  vol = _volume(dtype=dtype)
  path = tmp_path / name
  io.write_volume(path, vol)
  got = io.read_volume(path, mmap=mmap)
  assert tuple(got.shape) == vol.shape and got.dtype == vol.dtype
  np.testing.assert_array_equal(np.asarray(got), vol)
  np.testing.assert_array_equal(got[2:4, 1, 3:], vol[2:4, 1, 3:])  # a tile, without reading the rest
  if not mmap:
    assert type(got) is np.ndarray  # pylint: disable=unidiomatic-typecheck
  _no_temp_files(tmp_path)


@pytest.mark.parametrize('name', ['v.npy', 'v.npz', 'v.tif', 'v.h5'])
def test_mmap_maps_uncompressed_files(tmp_path, name):
  path = tmp_path / name
  io.write_volume(path, _volume())
  assert isinstance(io.read_volume(path, mmap=True), np.memmap)


def test_compressed_files_read_without_mmap(tmp_path):
  vol = _volume()
  for name in ('c.npz', 'c.tif', 'c.h5'):
    io.write_volume(tmp_path / name, vol, compress=True)
    got = io.read_volume(tmp_path / name)
    np.testing.assert_array_equal(np.asarray(got), vol)
  assert isinstance(io.read_volume(tmp_path / 'c.h5'), io.H5Volume)  # chunked: lazy, read per tile


def test_slice_folder_is_lazy_and_ordered(tmp_path):
  vol = _volume(shape=(12, 5, 6))
  folder = tmp_path / 'stack'
  folder.mkdir()
  for i in range(12):  # names that sort wrongly as plain strings
    tifffile.imwrite(folder / f'img{i}.tif', vol[i])
  (folder / 'notes.txt').write_text('ignored')
  got = io.read_volume(folder)
  assert isinstance(got, io.PlaneStack) and got.shape == (12, 5, 6)
  np.testing.assert_array_equal(np.asarray(got), vol)
  np.testing.assert_array_equal(got[10], vol[10])


def test_leading_singleton_axis_is_dropped(tmp_path):
  vol = _volume()
  np.save(tmp_path / 'v.npy', vol[None])  # VolRAFT stores (1, X0, X1, X2)
  np.testing.assert_array_equal(io.read_volume(tmp_path / 'v.npy'), vol)
  with h5py.File(tmp_path / 'v.h5', 'w') as f:
    f.create_dataset('vol', data=vol[None], chunks=(1, 2, 7, 8))
  np.testing.assert_array_equal(np.asarray(io.read_volume(tmp_path / 'v.h5')), vol)


@pytest.mark.parametrize('name', ['f.npy', 'f.npz', 'f.tif', 'f.h5'])
def test_flow_round_trip(tmp_path, name):
  flow = _flow()
  io.write_flow(tmp_path / name, flow.astype(np.float64))
  got = io.read_flow(tmp_path / name)
  assert got.dtype == np.float32 and got.shape == flow.shape
  np.testing.assert_array_equal(np.asarray(got), flow)
  _no_temp_files(tmp_path)


def test_sample_round_trip_and_determinism(tmp_path):
  vol0, vol1, flow = _volume(), _volume(seed=2), _flow()
  meta = {'seed': [1, 2], 'deformation': 'affine'}
  for name in ('a.npz', 'b.npz'):
    io.write_sample(tmp_path / name, vol0, vol1, flow, meta)
  assert (tmp_path / 'a.npz').read_bytes() == (tmp_path / 'b.npz').read_bytes()
  with np.load(tmp_path / 'a.npz', allow_pickle=False) as z:
    assert sorted(z.files) == ['I1', 'I2', 'flow', 'metadata']
    assert json.loads(str(z['metadata'])) == meta
  s = io.read_sample(tmp_path / 'a.npz')
  np.testing.assert_array_equal(s['I1'], vol0)
  np.testing.assert_array_equal(s['I2'], vol1)
  np.testing.assert_array_equal(s['flow'], flow)
  assert s['metadata'] == meta
  # Members of a sample are read by name.
  np.testing.assert_array_equal(io.read_volume(tmp_path / 'a.npz', key='I2'), vol1)
  np.testing.assert_array_equal(io.read_flow(tmp_path / 'a.npz'), flow)


def test_pickled_metadata_is_never_unpickled(tmp_path):
  np.savez(tmp_path / 'old.npz', I1=_volume(), I2=_volume(), flow=_flow(),
           metadata=np.array({'a': 1}, dtype=object))
  s = io.read_sample(tmp_path / 'old.npz')
  assert s['metadata'] is None and s['I1'].shape == (6, 7, 8)


def test_atomic_write_leaves_nothing_behind(tmp_path, monkeypatch):
  path = tmp_path / 'v.npy'
  io.write_volume(path, _volume())
  before = path.read_bytes()

  def broken_save(*args, **kwargs):
    with open(args[0], 'wb') as f:
      f.write(b'half')
    raise OSError('disk full')
  monkeypatch.setattr(np, 'save', broken_save)
  with pytest.raises(OSError):
    io.write_volume(path, _volume(seed=5))
  assert path.read_bytes() == before
  _no_temp_files(tmp_path)


BAD_FILES = {
    'garbage.npy': b'not an array at all',
    'garbage.npz': b'PK\x03\x04 truncated',
    'garbage.tif': b'II*\x00garbage',
    'garbage.h5': b'\x89HDF\r\n\x1a\n broken',
    'volume.xyz': b'',
}


@pytest.mark.parametrize('name', sorted(BAD_FILES))
def test_unreadable_files_are_refused(tmp_path, name):
  path = tmp_path / name
  path.write_bytes(BAD_FILES[name])
  with pytest.raises(io.VolumeError) as e:
    io.read_volume(path)
  _one_line_naming(e, path)


@pytest.mark.parametrize('shape', [(5, 6), (2, 3, 4, 5), (0, 4, 4)])
def test_wrong_rank_or_empty_is_refused(tmp_path, shape):
  path = tmp_path / 'v.npy'
  np.save(path, np.zeros(shape, np.float32))
  with pytest.raises(io.VolumeError) as e:
    io.read_volume(path)
  _one_line_naming(e, path)


def test_flow_shape_is_checked(tmp_path):
  path = tmp_path / 'f.npy'
  np.save(path, np.zeros((2, 4, 4, 4), np.float32))
  with pytest.raises(io.VolumeError, match=r'\(3, X0, X1, X2\)') as e:
    io.read_flow(path)
  _one_line_naming(e, path)
  with pytest.raises(io.VolumeError):
    io.write_flow(tmp_path / 'g.npy', np.zeros((4, 4, 4, 3), np.float32))
  assert not (tmp_path / 'g.npy').exists()


@pytest.mark.parametrize('name', ['v.npy', 'v.npz', 'v.tif', 'v.h5', 'slices'])
def test_non_finite_values_are_refused(tmp_path, name):
  vol = _volume()
  path = tmp_path / name
  io.write_volume(path, vol)
  vol[3, 4, 5] = np.nan
  # Write around write_volume's own check to plant the NaN.
  if name.endswith('.npy'):
    np.save(path, vol)
  elif name.endswith('.npz'):
    np.savez(path, volume=vol)
  elif name.endswith('.tif'):
    tifffile.imwrite(path, vol)
  elif name.endswith('.h5'):
    with h5py.File(path, 'w') as f:
      f['volume'] = vol
  else:
    tifffile.imwrite(path / 'slice_00003.tif', vol[3])
  with pytest.raises(io.VolumeError, match=r'non-finite.*\(3, 4, 5\)') as e:
    io.read_volume(path)
  assert str(path) in str(e.value)
  with pytest.raises(io.VolumeError):
    io.write_volume(tmp_path / 'w.npy', vol)


def test_other_refusals(tmp_path):
  np.savez(tmp_path / 'two.npz', a=_volume(), b=_volume())
  with pytest.raises(io.VolumeError, match='2 arrays'):
    io.read_volume(tmp_path / 'two.npz')
  with pytest.raises(io.VolumeError, match="no array 'c'"):
    io.read_volume(tmp_path / 'two.npz', key='c')
  np.save(tmp_path / 'c.npy', np.zeros((4, 4, 4), np.complex64))
  with pytest.raises(io.VolumeError, match='dtype'):
    io.read_volume(tmp_path / 'c.npy')
  with pytest.raises(io.VolumeError, match='no such file'):
    io.read_volume(tmp_path / 'missing.npy')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(io.VolumeError, match='without .tif slices'):
    io.read_volume(tmp_path / 'empty')
  np.savez(tmp_path / 'nosample.npz', I1=_volume())
  with pytest.raises(io.VolumeError, match='no I2, flow'):
    io.read_sample(tmp_path / 'nosample.npz')
  np.savez(tmp_path / 'mismatch.npz', I1=_volume(), I2=_volume((6, 7, 9)), flow=_flow())
  with pytest.raises(io.VolumeError, match='differ in shape'):
    io.read_sample(tmp_path / 'mismatch.npz')


def test_read_pair_refuses_mismatched_volumes(tmp_path):
  io.write_volume(tmp_path / 'a.npy', _volume())
  io.write_volume(tmp_path / 'b.npy', _volume((6, 7, 9)))
  with pytest.raises(io.VolumeError) as e:
    io.read_pair_files(tmp_path / 'a.npy', tmp_path / 'b.npy')
  _one_line_naming(e, tmp_path / 'b.npy')


def test_h5_without_h5py_says_how_to_install(tmp_path, monkeypatch):
  io.write_volume(tmp_path / 'v.h5', _volume())
  real_import = builtins.__import__

  def no_h5py(name, *args, **kwargs):
    if name == 'h5py':
      raise ImportError('No module named h5py')
    return real_import(name, *args, **kwargs)
  monkeypatch.setattr(builtins, '__import__', no_h5py)
  with pytest.raises(io.VolumeError, match=r'raftdvc_jax\[h5\]'):
    io.read_volume(tmp_path / 'v.h5')


# ---------------------------------------------------------------------------------------------------------
# Directory datasets and the batch iterator.


def _write_npz_dir(root, n=5, shape=(8, 8, 8)):
  os.makedirs(root, exist_ok=True)
  for i in range(n):
    io.write_sample(os.path.join(root, f'sample_{i:05d}.npz'), _volume(shape, seed=i), _volume(shape, seed=i + 50),
                    _flow(shape, seed=i), {'index': i})


def test_npz_dataset(tmp_path):
  _write_npz_dir(tmp_path / 'train')
  ds = datasets.NpzDataset(tmp_path, split='train')
  assert len(ds) == 5
  s = ds[3]
  np.testing.assert_array_equal(s['vol0'], _volume((8, 8, 8), seed=3))
  np.testing.assert_array_equal(s['flow'], _flow((8, 8, 8), seed=3))
  assert s['name'] == 'sample_00003.npz'
  with pytest.raises(io.VolumeError, match='no files'):
    datasets.NpzDataset(tmp_path)


def test_pair_directory_dataset(tmp_path):
  for sub in ('vol0', 'vol1', 'flow', 'mask'):
    (tmp_path / sub).mkdir()
  for name in ('a.npy', 'b.npy'):
    np.save(tmp_path / 'vol0' / name, _volume()[None])
    np.save(tmp_path / 'vol1' / name, _volume(seed=3))
    np.save(tmp_path / 'flow' / name, _flow())
    np.save(tmp_path / 'mask' / name, np.ones((6, 7, 8), bool))
  ds = datasets.PairDirectoryDataset(tmp_path)
  assert len(ds) == 2 and ds.names == ['a', 'b']
  s = ds[1]
  assert s['vol0'].dtype == np.float32 and s['vol0'].shape == (6, 7, 8) and s['mask'].dtype == np.float32
  np.testing.assert_array_equal(s['flow'], _flow())
  # A mismatched pair names the second file.
  np.save(tmp_path / 'vol1' / 'b.npy', _volume((6, 7, 9)))
  with pytest.raises(io.VolumeError) as e:
    ds[1]
  _one_line_naming(e, tmp_path / 'vol1' / 'b.npy')
  # A missing partner is refused when the dataset is opened.
  os.remove(tmp_path / 'flow' / 'a.npy')
  with pytest.raises(io.VolumeError) as e:
    datasets.PairDirectoryDataset(tmp_path)
  _one_line_naming(e, tmp_path / 'flow' / 'a.npy')


def test_batches_are_reproducible_epochs_and_resumable(tmp_path):
  _write_npz_dir(tmp_path, n=5)
  ds = datasets.NpzDataset(tmp_path)
  run = lambda **kw: list(datasets.batches(ds, 2, seed=3, augment=augment.Augment(), **kw))
  a, b = run(num_steps=5), run(num_steps=5, num_workers=1, prefetch=1)
  for x, y in zip(a, b):
    assert sorted(x) == ['flow', 'vol0', 'vol1']
    assert x['vol0'].shape == (2, 8, 8, 8) and x['flow'].shape == (2, 3, 8, 8, 8)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  for x, y in zip(a[2:], run(start_step=2, num_steps=3)):
    np.testing.assert_array_equal(x['flow'], y['flow'])
  # Without augmentation or shuffle, the first epoch visits every sample once, in order.
  plain = list(datasets.batches(ds, 5, shuffle=False, num_steps=1))[0]
  for i in range(5):
    np.testing.assert_array_equal(plain['vol1'][i], ds[i]['vol1'])
  shuffled = list(datasets.batches(ds, 5, seed=1, num_steps=1))[0]
  assert sorted(float(v.sum()) for v in shuffled['vol1']) == sorted(float(ds[i]['vol1'].sum()) for i in range(5))


def test_batches_in_processes_match_threads(tmp_path):
  _write_npz_dir(tmp_path, n=3)
  ds = datasets.NpzDataset(tmp_path)
  kw = dict(seed=2, augment=augment.Augment(), num_steps=2, num_workers=2)
  threads = list(datasets.batches(ds, 2, **kw))
  processes = list(datasets.batches(ds, 2, processes=True, **kw))
  for x, y in zip(threads, processes):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_batch_of_unequal_shapes_is_refused():
  samples = [{'vol0': np.zeros(s), 'vol1': np.zeros(s), 'flow': np.zeros((3,) + s)} for s in ((4, 4, 4), (4, 4, 5))]
  with pytest.raises(ValueError, match='crop'):
    datasets.collate(samples)
