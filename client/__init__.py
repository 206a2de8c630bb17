"""The data-owning site: the Flower ClientApp that trains under the site's own budget."""
