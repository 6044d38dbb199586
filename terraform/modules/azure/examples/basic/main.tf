# One Strait site in a new virtual network. terraform init && terraform
# apply, then read the management token from Key Vault (see the module's
# README).

provider "azurerm" {
  features {}
}

variable "image_id" {
  type        = string
  description = "An image with strait, the Azure CLI and jq."
}

variable "admin_ssh_public_key" {
  type        = string
  description = "The VMs' admin SSH public key."
}

resource "azurerm_resource_group" "strait" {
  name     = "strait-azure-eu"
  location = "westeurope"
}

resource "azurerm_virtual_network" "site" {
  name                = "strait-azure-eu"
  resource_group_name = azurerm_resource_group.strait.name
  location            = azurerm_resource_group.strait.location
  address_space       = ["10.30.0.0/16"]
}

resource "azurerm_subnet" "apps" {
  name                 = "apps"
  resource_group_name  = azurerm_resource_group.strait.name
  virtual_network_name = azurerm_virtual_network.site.name
  address_prefixes     = ["10.30.1.0/24"]
}

resource "azurerm_subnet" "dns" {
  for_each             = { in = "10.30.250.0/28", out = "10.30.250.16/28" }
  name                 = "dns-${each.key}"
  resource_group_name  = azurerm_resource_group.strait.name
  virtual_network_name = azurerm_virtual_network.site.name
  address_prefixes     = [each.value]
  delegation {
    name = "resolver"
    service_delegation {
      name    = "Microsoft.Network/dnsResolvers"
      actions = ["Microsoft.Network/virtualNetworks/subnets/join/action"]
    }
  }
}

module "site" {
  source                      = "../.."
  site                        = "azure-eu"
  resource_group_name         = azurerm_resource_group.strait.name
  location                    = azurerm_resource_group.strait.location
  virtual_network_id          = azurerm_virtual_network.site.id
  subnet_id                   = azurerm_subnet.apps.id
  resolver_inbound_subnet_id  = azurerm_subnet.dns["in"].id
  resolver_outbound_subnet_id = azurerm_subnet.dns["out"].id
  api_private_ip              = "10.30.1.10"
  image_id                    = var.image_id
  admin_ssh_public_key        = var.admin_ssh_public_key
  site_cidrs                  = ["10.30.0.0/16"]
  peer_gateway_cidrs          = ["0.0.0.0/0"] # tighten to your other sites' gateway addresses
}

output "gateway_addresses" {
  value = module.site.gateway_addresses
}

output "api_address" {
  value = module.site.api_address
}
