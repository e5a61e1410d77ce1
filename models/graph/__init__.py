"""Graph data for the retrieval models: datasets, edge splits and fixed fan-out neighbourhood sampling."""

from models.graph.datasets import Graph, GraphDataError, load_ego_facebook, synthetic_graph
from models.graph.sampling import Neighbourhood, NeighbourSampler
from models.graph.split import EdgeSplit, split_edges

__all__ = [
    "EdgeSplit",
    "Graph",
    "GraphDataError",
    "Neighbourhood",
    "NeighbourSampler",
    "load_ego_facebook",
    "split_edges",
    "synthetic_graph",
]
