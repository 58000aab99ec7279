import pytest

from remusdb import config
from remusdb.config import ConfigError


def write(tmp_path, text):
    p = tmp_path / "vm.toml"
    p.write_text(text)
    return p


def test_defaults_and_example_are_valid(tmp_path):
    cfg = config.load(write(tmp_path, config.EXAMPLE))
    assert cfg.vm.name == "pg1"
    assert cfg.vm.memory == 1 << 30
    assert cfg.checkpoint.interval_ms == 100
    assert cfg.optimizations.compression == "xor-lz4"
    assert config.Config().vm.address == "10.213.0.10"


@pytest.mark.parametrize("text,size", [("1G", 1 << 30), ("1048584K", 1048584 * 1024),
                                       ("512MiB", 512 << 20), (4096, 4096)])
def test_parse_size(text, size):
    assert config.parse_size(text) == size


def test_memory_not_a_multiple_of_256k_is_allowed(tmp_path):
    cfg = config.load(write(tmp_path, '[vm]\nmemory = "1048584K"\n'))
    assert cfg.vm.memory == (1 << 30) + 8192


@pytest.mark.parametrize("text,message", [
    ('[vm]\nmemroy = "1G"\n',
     "config error: unknown key 'vm.memroy' (known: accel, bridge, cpu, gateway, image, init, ip, "
     "mac, memory, name, network, qemu, ram_dir, run_dir, tap, vcpus)"),
    ('[standbys]\naddress = "x"\n',
     "config error: unknown section [standbys] (known: vm, checkpoint, optimizations, "
     "primary, standby, link, api, witness)"),
    ('[witness]\nendpoints = ["etcd:2379"]\n',
     "config error: witness.endpoints = ['etcd:2379']: expected http://HOST:PORT or "
     "https://HOST:PORT, got 'etcd:2379'"),
    ('[witness]\nttl_s = 1\n', "config error: witness.ttl_s = 1: expected an integer from 2 to 60"),
    ('[vm]\nmemory = "1X"\n',
     "config error: vm.memory = '1X': expected a size like 1G, 512M or 1048584K, got '1X'"),
    ('[vm]\nmemory = "64M"\n',
     "config error: vm.memory = '64M': expected between 128M and 1T, a multiple of 4K"),
    ('[vm]\nvcpus = 0\n', "config error: vm.vcpus = 0: expected an integer from 1 to 64"),
    ('[vm]\nvcpus = "2"\n', "config error: vm.vcpus = '2': expected an integer from 1 to 64"),
    ('[vm]\naccel = "xen"\n', "config error: vm.accel = 'xen': expected one of auto, kvm, tcg"),
    ('[vm]\nip = "10.0.0.300/24"\n',
     "config error: vm.ip = '10.0.0.300/24': expected an IPv4 address with prefix, "
     "like 10.213.0.10/24"),
    ('[vm]\nip = "10.0.0.3"\n',
     "config error: vm.ip = '10.0.0.3': expected an IPv4 address with prefix, like 10.213.0.10/24"),
    ('[vm]\nname = "Bad Name"\n',
     "config error: vm.name = 'Bad Name': expected 1-24 characters a-z, 0-9 and '-', "
     "starting with a letter"),
    ('[checkpoint]\ninterval_ms = 5\n',
     "config error: checkpoint.interval_ms = 5: expected an integer from 10 to 10000"),
    ('[optimizations]\ncompression = "zip"\n',
     "config error: optimizations.compression = 'zip': expected one of off, xor-rle, xor-lz4"),
    ('[optimizations]\ncp = "yes"\n',
     "config error: optimizations.cp = 'yes': expected true or false"),
    ('[optimizations]\npage_cache = 1.5\n',
     "config error: optimizations.page_cache = 1.5: expected a fraction of guest RAM, 0 < x <= 1"),
    ('[standby]\nport = 70000\n',
     "config error: standby.port = 70000: expected an integer from 1 to 65535"),
    ('vm = 3\n', "config error: [vm] must be a table"),
])
def test_bad_config_names_key_and_value(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, text))
    assert str(e.value) == message


def test_missing_image(tmp_path):
    missing = tmp_path / "nope.raw"
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, f'[vm]\nimage = "{missing}"\n'))
    assert str(e.value) == f"config error: vm.image = '{missing}': image file not found"


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"invalid TOML"):
        config.load(write(tmp_path, "[vm\n"))
    with pytest.raises(ConfigError, match=r"^config error: file not found: "):
        config.load(tmp_path / "absent.toml")


def test_mac_is_stable_and_locally_administered():
    a = config.VMConfig(name="pg1").mac_address
    assert a == config.VMConfig(name="pg1").mac_address
    assert a != config.VMConfig(name="pg2").mac_address
    assert a.startswith("52:54:00:")


def test_dumps_round_trips_a_non_default_config(tmp_path):
    import tomllib

    cfg = config.Config()
    cfg.vm.name, cfg.vm.memory, cfg.vm.vcpus, cfg.vm.accel = "pg7", 3 << 29, 3, "tcg"
    cfg.vm.ip, cfg.vm.gateway, cfg.vm.run_dir = "10.9.0.5/16", "10.9.0.1", "/tmp/x"
    cfg.checkpoint.interval_ms = 250
    cfg.optimizations.compression, cfg.optimizations.cp = "xor-rle", True
    cfg.optimizations.page_cache = 0.25
    cfg.standby.address, cfg.standby.port = "10.9.0.2", 7000
    cfg.standby.fence_command = "ipmitool power off"
    assert cfg != config.Config()
    text = config.dumps(cfg)
    assert config.from_dict(tomllib.loads(text)) == cfg
    assert config.load(write(tmp_path, text)) == cfg


def test_a_lab_config_loads_as_written(tmp_path):
    from remusdb.lab.daemons import write_config
    from remusdb.lab.layout import RunLayout
    from remusdb.lab.net import VM_IP, Host, Lab
    from remusdb.protection import role_dir

    lab = Lab(members={h: Host(h, f"ns-{h}", f"10.213.0.{i}/24")
                       for i, h in enumerate(Lab.hosts, start=1)})
    run = RunLayout(tmp_path)
    path = write_config(run.config, lab, interval_ms=50, optimizations={"cp": True, "rt": False},
                        memory="2G", vcpus=1)
    cfg = config.load(path)
    assert (cfg.vm.name, cfg.vm.gateway, cfg.vm.run_dir) == ("pg1", "10.213.0.1", str(tmp_path))
    assert (cfg.vm.memory, cfg.vm.vcpus, cfg.vm.address) == (2 << 30, 1, VM_IP)
    assert cfg.checkpoint.interval_ms == 50
    assert (cfg.optimizations.cp, cfg.optimizations.rt) == (True, False)
    assert cfg.optimizations.compression == config.OptimizationsConfig().compression
    assert (cfg.standby.address, cfg.standby.heartbeat_timeout_ms) == ("10.213.0.2", 1000)
    # the layout finds the daemons' files where the product puts them
    for role in ("primary", "standby"):
        assert run.status(role) == role_dir(cfg, role) / f"{role}.status.json"
