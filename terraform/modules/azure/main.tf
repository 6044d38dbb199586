terraform {
  required_version = ">= 1.5"
  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = ">= 4.0"
    }
  }
}

data "azurerm_client_config" "current" {}

locals {
  trust_domain = "${var.site}.strait"
  tags         = merge(var.tags, { "strait-site" = var.site })
  join_address = "${var.api_private_ip}:${var.api_port}"

  strait_config = templatefile("${path.module}/templates/strait.yaml.tftpl", {
    site            = var.site
    api_port        = var.api_port
    bundle_port     = var.bundle_port
    mesh_domain     = var.mesh_domain
    dns_upstreams   = var.dns_upstreams
    virtual_ip_cidr = var.virtual_ip_cidr
  })
}

# --- Identity and the bootstrap secrets ------------------------------------

resource "azurerm_user_assigned_identity" "server" {
  name                = "strait-${var.site}-server"
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = local.tags
}

resource "azurerm_user_assigned_identity" "gateway" {
  name                = "strait-${var.site}-gateway"
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = local.tags
}

# The first server stores what the others need here, once.
resource "azurerm_key_vault" "bootstrap" {
  name                       = substr("strait-${var.site}-${substr(sha1(var.resource_group_name), 0, 6)}", 0, 24)
  resource_group_name        = var.resource_group_name
  location                   = var.location
  tenant_id                  = data.azurerm_client_config.current.tenant_id
  sku_name                   = "standard"
  purge_protection_enabled   = true
  soft_delete_retention_days = 7
  tags                       = local.tags
  access_policy {
    tenant_id          = data.azurerm_client_config.current.tenant_id
    object_id          = azurerm_user_assigned_identity.server.principal_id
    secret_permissions = ["Get", "Set"]
  }
  access_policy {
    tenant_id          = data.azurerm_client_config.current.tenant_id
    object_id          = azurerm_user_assigned_identity.gateway.principal_id
    secret_permissions = ["Get"]
  }
}

# --- Firewall: only the gateway port from other sites ----------------------

resource "azurerm_network_security_group" "server" {
  name                = "strait-${var.site}-server"
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = local.tags
  security_rule {
    name                       = "api-dns-from-site"
    description                = "API, bundle endpoint and mesh DNS from inside the site"
    priority                   = 100
    direction                  = "Inbound"
    access                     = "Allow"
    protocol                   = "*"
    source_address_prefixes    = var.site_cidrs
    source_port_range          = "*"
    destination_address_prefix = "*"
    destination_port_ranges    = [tostring(var.api_port), tostring(var.bundle_port), "53"]
  }
  security_rule {
    name                       = "health-probes"
    priority                   = 110
    direction                  = "Inbound"
    access                     = "Allow"
    protocol                   = "Tcp"
    source_address_prefix      = "AzureLoadBalancer"
    source_port_range          = "*"
    destination_address_prefix = "*"
    destination_port_range     = tostring(var.api_port)
  }
  security_rule {
    name                       = "deny-rest"
    priority                   = 4000
    direction                  = "Inbound"
    access                     = "Deny"
    protocol                   = "*"
    source_address_prefix      = "*"
    source_port_range          = "*"
    destination_address_prefix = "*"
    destination_port_range     = "*"
  }
}

resource "azurerm_network_security_group" "gateway" {
  name                = "strait-${var.site}-gateway"
  resource_group_name = var.resource_group_name
  location            = var.location
  tags                = local.tags
  dynamic "security_rule" {
    for_each = length(var.peer_gateway_cidrs) > 0 ? [1] : []
    content {
      name                       = "gateway-from-peers"
      description                = "The gateway port, from other sites' gateways only"
      priority                   = 100
      direction                  = "Inbound"
      access                     = "Allow"
      protocol                   = "Tcp"
      source_address_prefixes    = var.peer_gateway_cidrs
      source_port_range          = "*"
      destination_address_prefix = "*"
      destination_port_range     = tostring(var.gateway_port)
    }
  }
  security_rule {
    name                       = "from-site"
    description                = "Egress to imported services (virtual IPs) from inside the site"
    priority                   = 110
    direction                  = "Inbound"
    access                     = "Allow"
    protocol                   = "Tcp"
    source_address_prefixes    = var.site_cidrs
    source_port_range          = "*"
    destination_address_prefix = "*"
    destination_port_range     = "*"
  }
  security_rule {
    name                       = "health-probes"
    priority                   = 120
    direction                  = "Inbound"
    access                     = "Allow"
    protocol                   = "Tcp"
    source_address_prefix      = "AzureLoadBalancer"
    source_port_range          = "*"
    destination_address_prefix = "*"
    destination_port_range     = tostring(var.gateway_port)
  }
  security_rule {
    name                       = "deny-rest"
    priority                   = 4000
    direction                  = "Inbound"
    access                     = "Deny"
    protocol                   = "*"
    source_address_prefix      = "*"
    source_port_range          = "*"
    destination_address_prefix = "*"
    destination_port_range     = "*"
  }
}

# --- The site's internal address: API, bundle endpoint and DNS -------------

resource "azurerm_lb" "internal" {
  name                = "strait-${var.site}-internal"
  resource_group_name = var.resource_group_name
  location            = var.location
  sku                 = "Standard"
  tags                = local.tags
  frontend_ip_configuration {
    name                          = "api"
    subnet_id                     = var.subnet_id
    private_ip_address            = var.api_private_ip
    private_ip_address_allocation = "Static"
    zones                         = var.zones
  }
}

resource "azurerm_lb_backend_address_pool" "servers" {
  name            = "servers"
  loadbalancer_id = azurerm_lb.internal.id
}

resource "azurerm_lb_probe" "api" {
  name            = "api"
  loadbalancer_id = azurerm_lb.internal.id
  protocol        = "Tcp"
  port            = var.api_port
}

resource "azurerm_lb_rule" "internal" {
  for_each = {
    api     = { protocol = "Tcp", port = var.api_port }
    bundle  = { protocol = "Tcp", port = var.bundle_port }
    dns-tcp = { protocol = "Tcp", port = 53 }
    dns-udp = { protocol = "Udp", port = 53 }
  }
  name                           = each.key
  loadbalancer_id                = azurerm_lb.internal.id
  protocol                       = each.value.protocol
  frontend_port                  = each.value.port
  backend_port                   = each.value.port
  frontend_ip_configuration_name = "api"
  backend_address_pool_ids       = [azurerm_lb_backend_address_pool.servers.id]
  probe_id                       = azurerm_lb_probe.api.id
}

# --- Servers: one auto-healing scale set per slot ---------------------------
# Automatic repairs reimage a failed instance: the OS disk is reset, the
# data disk (Raft log, identity, KEK) is kept, so it restarts as the same
# server.

resource "azurerm_linux_virtual_machine_scale_set" "server" {
  count               = var.server_count
  name                = "strait-${var.site}-s${count.index}"
  resource_group_name = var.resource_group_name
  location            = var.location
  sku                 = var.server_vm_size
  instances           = 1
  zones               = [var.zones[count.index % length(var.zones)]]
  admin_username      = var.admin_username
  source_image_id     = var.image_id
  upgrade_mode        = "Manual"
  health_probe_id     = azurerm_lb_probe.api.id
  tags                = local.tags
  admin_ssh_key {
    username   = var.admin_username
    public_key = var.admin_ssh_public_key
  }
  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.server.id]
  }
  os_disk {
    caching              = "ReadWrite"
    storage_account_type = "Premium_LRS"
  }
  data_disk {
    lun                  = 0
    caching              = "None"
    disk_size_gb         = var.data_disk_size
    storage_account_type = "Premium_LRS"
  }
  network_interface {
    name                      = "nic"
    primary                   = true
    network_security_group_id = azurerm_network_security_group.server.id
    ip_configuration {
      name                                   = "ip"
      primary                                = true
      subnet_id                              = var.subnet_id
      load_balancer_backend_address_pool_ids = [azurerm_lb_backend_address_pool.servers.id]
    }
  }
  automatic_instance_repair {
    enabled      = true
    grace_period = "PT10M"
    action       = "Reimage"
  }
  custom_data = base64encode(templatefile("${path.module}/templates/server-boot.sh.tftpl", {
    site          = var.site
    slot          = count.index
    vault         = azurerm_key_vault.bootstrap.name
    identity      = azurerm_user_assigned_identity.server.client_id
    api_port      = var.api_port
    join_address  = local.join_address
    strait_config = local.strait_config
    server_count  = var.server_count
    gateway_count = var.gateway_count
  }))
}

# --- Gateways: an auto-healing scale set behind a public load balancer -----

resource "azurerm_public_ip" "gateway" {
  name                = "strait-${var.site}-gateway"
  resource_group_name = var.resource_group_name
  location            = var.location
  allocation_method   = "Static"
  sku                 = "Standard"
  zones               = var.zones
  tags                = local.tags
}

resource "azurerm_lb" "gateway" {
  name                = "strait-${var.site}-gateway"
  resource_group_name = var.resource_group_name
  location            = var.location
  sku                 = "Standard"
  tags                = local.tags
  frontend_ip_configuration {
    name                 = "wan"
    public_ip_address_id = azurerm_public_ip.gateway.id
  }
}

resource "azurerm_lb_backend_address_pool" "gateways" {
  name            = "gateways"
  loadbalancer_id = azurerm_lb.gateway.id
}

resource "azurerm_lb_probe" "gateway" {
  name            = "gateway"
  loadbalancer_id = azurerm_lb.gateway.id
  protocol        = "Tcp"
  port            = var.gateway_port
}

resource "azurerm_lb_rule" "gateway" {
  name                           = "gateway"
  loadbalancer_id                = azurerm_lb.gateway.id
  protocol                       = "Tcp"
  frontend_port                  = var.gateway_port
  backend_port                   = var.gateway_port
  frontend_ip_configuration_name = "wan"
  backend_address_pool_ids       = [azurerm_lb_backend_address_pool.gateways.id]
  probe_id                       = azurerm_lb_probe.gateway.id
  disable_outbound_snat          = false
}

resource "azurerm_linux_virtual_machine_scale_set" "gateway" {
  name                = "strait-${var.site}-gw"
  resource_group_name = var.resource_group_name
  location            = var.location
  sku                 = var.gateway_vm_size
  instances           = var.gateway_count
  zones               = var.zones
  admin_username      = var.admin_username
  source_image_id     = var.image_id
  upgrade_mode        = "Manual"
  health_probe_id     = azurerm_lb_probe.gateway.id
  tags                = local.tags
  admin_ssh_key {
    username   = var.admin_username
    public_key = var.admin_ssh_public_key
  }
  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.gateway.id]
  }
  os_disk {
    caching              = "ReadWrite"
    storage_account_type = "Premium_LRS"
  }
  network_interface {
    name                           = "nic"
    primary                        = true
    accelerated_networking_enabled = true
    network_security_group_id      = azurerm_network_security_group.gateway.id
    ip_configuration {
      name                                   = "ip"
      primary                                = true
      subnet_id                              = var.subnet_id
      load_balancer_backend_address_pool_ids = [azurerm_lb_backend_address_pool.gateways.id]
    }
  }
  automatic_instance_repair {
    enabled      = true
    grace_period = "PT10M"
    action       = "Replace"
  }
  custom_data = base64encode(templatefile("${path.module}/templates/gateway-boot.sh.tftpl", {
    site            = var.site
    vault           = azurerm_key_vault.bootstrap.name
    identity        = azurerm_user_assigned_identity.gateway.client_id
    join_address    = local.join_address
    gateway_port    = var.gateway_port
    advertise_wan   = "${azurerm_public_ip.gateway.ip_address}:${var.gateway_port}"
    virtual_ip_cidr = var.virtual_ip_cidr
  }))
}

# --- DNS: the mesh domain forwarded to the servers -------------------------

resource "azurerm_private_dns_resolver" "mesh" {
  name                = "strait-${var.site}"
  resource_group_name = var.resource_group_name
  location            = var.location
  virtual_network_id  = var.virtual_network_id
  tags                = local.tags
}

resource "azurerm_private_dns_resolver_inbound_endpoint" "mesh" {
  name                    = "inbound"
  private_dns_resolver_id = azurerm_private_dns_resolver.mesh.id
  location                = var.location
  ip_configurations {
    subnet_id = var.resolver_inbound_subnet_id
  }
}

resource "azurerm_private_dns_resolver_outbound_endpoint" "mesh" {
  name                    = "outbound"
  private_dns_resolver_id = azurerm_private_dns_resolver.mesh.id
  location                = var.location
  subnet_id               = var.resolver_outbound_subnet_id
}

resource "azurerm_private_dns_resolver_dns_forwarding_ruleset" "mesh" {
  name                                       = "strait-${var.site}-mesh"
  resource_group_name                        = var.resource_group_name
  location                                   = var.location
  private_dns_resolver_outbound_endpoint_ids = [azurerm_private_dns_resolver_outbound_endpoint.mesh.id]
  tags                                       = local.tags
}

resource "azurerm_private_dns_resolver_forwarding_rule" "mesh" {
  name                      = "mesh"
  dns_forwarding_ruleset_id = azurerm_private_dns_resolver_dns_forwarding_ruleset.mesh.id
  domain_name               = "${trimsuffix(var.mesh_domain, ".")}."
  enabled                   = true
  target_dns_servers {
    ip_address = var.api_private_ip
    port       = 53
  }
}

resource "azurerm_private_dns_resolver_virtual_network_link" "mesh" {
  name                      = "strait-${var.site}"
  dns_forwarding_ruleset_id = azurerm_private_dns_resolver_dns_forwarding_ruleset.mesh.id
  virtual_network_id        = var.virtual_network_id
}
