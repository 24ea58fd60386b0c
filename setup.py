from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_version():
    namespace = {}
    exec((HERE / 'damex_mmdet' / 'version.py').read_text(), namespace)
    return namespace['__version__']


def read_requirements(name):
    lines = (HERE / 'requirements' / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith('#')]


setup(
    name='damex_mmdet',
    version=read_version(),
    description='DAMEX: Dataset-aware Mixture-of-Experts for MMDetection 3.x',
    long_description=(HERE / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['damex_mmdet', 'damex_mmdet.*']),
    python_requires='>=3.8',
    install_requires=['torch>=2.1', 'mmcv==2.1.0'] + read_requirements('runtime.txt'),
    extras_require={'tests': read_requirements('tests.txt')},
    license='Apache-2.0',
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
