from setuptools import find_packages, setup

setup(
    name="devpi-tx",
    version="0.1.0",
    description="A private Python package index and PyPI caching server on Twisted, "
    "wire-compatible with devpi-server",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["devpi_tx", "devpi_tx.*"]) + ["twisted.plugins"],
    package_data={"twisted.plugins": ["devpi_tx_plugin.py"]},
    install_requires=[
        "twisted[tls]>=24.7",
        "klein>=23.12",
        # Klein routes with werkzeug; web/api.py imports werkzeug's HTTP exceptions itself.
        "werkzeug>=2",
        "treq>=23.11",
        "attrs>=23.1",
        "zope.interface>=6",
        "pyopenssl>=24",
        "service-identity>=24",
        "packaging>=24",
        # argon2id password hashes, the same scheme (and format) devpi-server uses.
        "argon2-cffi>=23.1",
        # YAML config files (loaded with the safe loader), as devpi-server reads.
        "pyyaml>=6",
        # Incremental (push) multipart parser for streaming uploads; already
        # required by treq, named here because devpi-tx uses it directly.
        "multipart>=1.0",
        # /+metrics: the Prometheus text exposition format, written by the
        # reference client library rather than by hand.
        "prometheus-client>=0.17",
    ],
    extras_require={
        # The state on PostgreSQL and files in S3-compatible storage
        # (docs/scale-out.md): psycopg 3, the maintained PostgreSQL driver,
        # and botocore, AWS's own implementation of S3 requests, signing
        # and the standard credential chain.
        "scale-out": ["psycopg[binary]>=3.2", "botocore>=1.34"],
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "devpi-client>=7.3,<8",
            "twine>=5",
            "uv>=0.4",
            "ruff>=0.6",
            # The scale-out tests: the drivers, and moto's S3 server (tests/scaleout.py).
            "psycopg[binary]>=3.2",
            "botocore>=1.34",
            "boto3>=1.34",
            "moto[server]>=5",
        ],
    },
    entry_points={"console_scripts": ["devpi-tx = devpi_tx.cli.main:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: System :: Software Distribution",
    ],
)
